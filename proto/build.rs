//! Compiles `proto/remote_help.proto` with protox (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/remote_help.proto";
    println!("cargo:rerun-if-changed={file}");
    let descriptors = protox::compile([file], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
