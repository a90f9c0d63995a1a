"""Agent-to-agent gRPC (mTLS): CNFPeer runs cloud-local steps at the owning agent, CNFControl carries
status, inventory and the master hand-over. See docs/peer-protocol.md.

Import the generated code through ``cnf.grpc.wire`` (``pb``, ``rpc``), never ``cnf_pb2`` directly.
"""
