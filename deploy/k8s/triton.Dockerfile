# The official Triton image with this project's model repository (the digits variants, as
# bentofile.yaml ships them to the BentoML image). Build from the repository root, after
# `make models`:
#   docker build -f deploy/k8s/triton.Dockerfile -t <registry>/imgserve-triton:25.10-py3-digits .
# and for the gpu overlay, model instances on the GPU instead of the CPU:
#   docker build -f deploy/k8s/triton.Dockerfile --build-arg INSTANCE_KIND=KIND_GPU \
#     -t <registry>/imgserve-triton:25.10-py3-digits-gpu .
# TRITON_TAG picks the release (nvcr.io/nvidia/tritonserver:<yy.mm>-py3); the compose file
# runs the same one. config.pbtxt files are copied as they are: the ONNX Runtime backend reads
# them and ignores the project.* parameters; the only change is the instance kind above.
ARG TRITON_TAG=25.10-py3
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}
ARG INSTANCE_KIND=KIND_CPU
COPY model_repository/digits_fp32 /models/digits_fp32
COPY model_repository/digits_int8 /models/digits_int8
RUN if [ "$INSTANCE_KIND" != KIND_CPU ]; then \
      sed -i "s/kind: KIND_CPU/kind: $INSTANCE_KIND/" /models/*/config.pbtxt; \
    fi
EXPOSE 8000 8001 8002
