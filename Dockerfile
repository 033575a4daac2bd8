# The ratelimitd image for ordinary registries: build with cargo, run on distroless
# (no shell, no package manager) as a non-root user. Build: docker build -t ratelimitd .
# On a machine with no image registry, scripts/build-image.sh builds an equivalent image.

FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY benches/store-compare/Cargo.toml benches/store-compare/Cargo.toml
COPY proto proto
COPY lua lua
COPY src src
RUN mkdir -p benches/store-compare/src && echo 'fn main() {}' > benches/store-compare/src/main.rs \
 && cargo build --release --locked --bin ratelimitd

# glibc, CA certificates (for rediss:// with the system roots), a nonroot user (65532), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/ratelimitd /usr/local/bin/ratelimitd
USER 65532:65532
EXPOSE 50051/tcp 9090/tcp
ENTRYPOINT ["/usr/local/bin/ratelimitd"]
