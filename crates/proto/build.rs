//! Compiles `proto/` with protox, a protobuf compiler written in Rust, so that building the
//! workspace needs no `protoc` on the machine.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it was compiled: a build script compiled
    // for one checkout must not keep reading another checkout's protos.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "faultline/common/v1/common.proto",
        "faultline/messaging/v1/envelope.proto",
        "faultline/inventory/v1/inventory.proto",
        "faultline/payments/v1/payments.proto",
        "faultline/orders/v1/orders.proto",
    ];
    println!("cargo:rerun-if-changed={}", root.display());

    let descriptors = protox::compile(files, [&root])?;
    let mut config = tonic_prost_build::Config::new();
    // `Name` gives every message its fully qualified protobuf name, which the envelope
    // carries as `message_type`.
    config.enable_type_names();
    tonic_prost_build::configure().compile_fds_with_config(descriptors, config)?;
    Ok(())
}
