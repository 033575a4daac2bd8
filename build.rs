//! Compiles `proto/` (ours, and the subset of Envoy's that ratelimitd serves) into the
//! gRPC client and server code, with the protoc
//! binary shipped by the `protoc-bin-vendored` crate so a fresh machine needs no
//! system protoc. Also writes the file descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let well_known = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        // Our codec maps a request that does not decode to INVALID_ARGUMENT (src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::Codec")
        .file_descriptor_set_path(out.join("ratelimit_descriptor.bin"))
        .compile_protos(
            &[
                PathBuf::from("proto/ratelimit/v1/ratelimit.proto"),
                "proto/ratelimit/admin/v1/admin.proto".into(),
                "proto/envoy/service/ratelimit/v3/rls.proto".into(),
            ],
            // Envoy's protos import Google's well-known types, which protoc-bin-vendored ships.
            &[PathBuf::from("proto"), well_known],
        )?;
    Ok(())
}
