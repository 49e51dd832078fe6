//! Compiles `proto/` with a vendored `protoc`, so a build needs nothing outside crates.io.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    // A `PROTOC` set by the builder wins; otherwise the vendored binary.
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => std::path::PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    config.protoc_executable(protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // The service's own codec: prost's, with a body that does not decode answered
    // INVALID_ARGUMENT rather than INTERNAL (src/codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::codec::ProtoCodec")
        .file_descriptor_set_path(out.join("wxauth_descriptor.bin"))
        .compile_with_config(config, &["proto/wxauth/v1/wxauth.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
