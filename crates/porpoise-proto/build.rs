//! Compiles `proto/*.proto` with the system `protoc` (Debian package `protobuf-compiler`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["worker.proto", "task_event.proto", "admin.proto"].map(|f| format!("../../proto/{f}"));
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    // the descriptors too, for gRPC reflection (grpcurl lists and calls the services with them)
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("porpoise_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .compile_protos(&protos, &["../../proto".to_string()])?;
    Ok(())
}
