//! Compiles `proto/` into the gRPC client and server code, with the protoc
//! binary shipped by the `protoc-bin-vendored` crate so a fresh machine needs no
//! system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(&["proto/ratelimit/v1/ratelimit.proto"], &["proto"])?;
    Ok(())
}
