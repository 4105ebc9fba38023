//! Compiles the plugin protocol (the repository's `proto/`) with protox, so that building needs
//! no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto/ktrigger/plugin/v1/plugin.proto");
    let descriptors = protox::compile(["ktrigger/plugin/v1/plugin.proto"], ["../../proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
