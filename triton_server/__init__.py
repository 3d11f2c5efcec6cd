"""The Triton Inference Server front end: KServe v2 over HTTP and gRPC, dynamic batching."""
