//! Compiles `proto/*.proto` with the system `protoc` (Debian package `protobuf-compiler`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["worker.proto", "task_event.proto", "admin.proto"].map(|f| format!("../../proto/{f}"));
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure().compile_protos(&protos, &["../../proto".to_string()])?;
    Ok(())
}
