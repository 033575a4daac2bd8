# The ratelimitd image for ordinary registries: build with cargo, run on distroless
# (no shell, no package manager) as a non-root user. Build: docker build -t ratelimitd .
# On a machine with no image registry, scripts/build-image.sh builds an equivalent image.

FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY benches/store-compare/Cargo.toml benches/store-compare/Cargo.toml
COPY tools/ratelimitd-bench/Cargo.toml tools/ratelimitd-bench/Cargo.toml
COPY proto proto
COPY lua lua
COPY src src
# The workspace's tool packages are stubbed: only the service is built.
RUN mkdir -p benches/store-compare/src tools/ratelimitd-bench/src \
 && echo 'fn main() {}' > benches/store-compare/src/main.rs \
 && echo 'fn main() {}' > tools/ratelimitd-bench/src/main.rs && touch tools/ratelimitd-bench/src/lib.rs \
 && cargo build --release --locked -p ratelimitd --bin ratelimitd

# glibc, CA certificates (for rediss:// with the system roots), a nonroot user (65532), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/ratelimitd /usr/local/bin/ratelimitd
USER 65532:65532
EXPOSE 50051/tcp 9090/tcp
ENTRYPOINT ["/usr/local/bin/ratelimitd"]
