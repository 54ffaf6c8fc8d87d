//! Every gRPC message a master accepts, decoded from arbitrary bytes: decoding never panics, and
//! what decodes encodes again to bytes that decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use porpoise_proto::v1 as pb;
use prost::Message;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(m) = M::decode(data) {
        let again = M::decode(m.encode_to_vec().as_slice()).expect("re-encoded bytes decode");
        assert_eq!(m, again);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 16 {
        0 => round_trip::<pb::ReportTaskEventsRequest>(rest),
        1 => round_trip::<pb::ProbeRegistryRequest>(rest),
        2 => {
            round_trip::<pb::ApplyWorkflowRequest>(rest);
            if let Ok(m) = pb::ApplyWorkflowRequest::decode(rest) {
                let _ = porpoise_core::WorkflowSpec::parse(&m.file_name, &m.spec_yaml);
            }
        }
        3 => round_trip::<pb::StartRunRequest>(rest),
        4 => round_trip::<pb::GetRunRequest>(rest),
        5 => round_trip::<pb::ListRunsRequest>(rest),
        6 => round_trip::<pb::RunControlRequest>(rest),
        7 => round_trip::<pb::RerunRunRequest>(rest),
        8 => round_trip::<pb::TaskControlRequest>(rest),
        9 => round_trip::<pb::TaskGroupRequest>(rest),
        10 => round_trip::<pb::ScheduleRequest>(rest),
        11 => round_trip::<pb::BackfillRequest>(rest),
        12 => round_trip::<pb::GetTaskInstanceLogRequest>(rest),
        13 => round_trip::<pb::CreateTokenRequest>(rest),
        14 => round_trip::<pb::GetWorkflowRequest>(rest),
        _ => round_trip::<pb::DispatchTaskRequest>(rest),
    }
});
