"""REST API v1 routes (the seed's endpoints), one module per resource."""
