//! Compiles proto/linetap/v1/*.proto and the Sparkplug B payload with protox (pure Rust), so
//! no `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/linetap/v1/model.proto",
        "proto/sparkplug_b/sparkplug_b.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
