# The image a declared controller runs (`controller "NAME" { infra = "k8s/CTX" }`, see
# docs/language.md): skyform on the PATH, working in /var/lib/skyform, where the Deployment
# mounts its configuration. Build and push it to a registry the cluster can pull from, and
# name it in the block's `image`:
#
#   docker build -t REGISTRY/skyform:VERSION . && docker push REGISTRY/skyform:VERSION
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates openssh-client rsync \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/skyform /usr/local/bin/skyform
WORKDIR /var/lib/skyform
CMD ["skyform", "controller", "run"]
