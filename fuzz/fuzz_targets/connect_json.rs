//! The JSON face's request decoding (issue 23, src/connect/transcode.rs): the input's first line
//! is an RPC's name, the rest the JSON body a caller sent. Invariants beyond "never panics":
//! JSON the face accepts encodes to protobuf the RPC's request message decodes; written back as
//! proto3 JSON (as answers are), that JSON is accepted again and encodes to the same bytes; a
//! refusal is INVALID_ARGUMENT naming the field `request`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wxauth::connect::Schema;
use wxauth::connect::transcode::{json_to_proto, proto_to_json};

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<std::sync::Arc<Schema>> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema::load().expect("the descriptor set loads"))
}

fuzz_target!(|data: &[u8]| {
    let (method, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"GetUserInfo"[..], data),
    };
    let Ok(method) = std::str::from_utf8(method) else { return };
    let path = format!("/{}/{}", wxauth::connect::SERVICE, method.trim());
    let Some((input, _)) = schema().method(&path) else { return };
    match json_to_proto(&input, body) {
        Ok(bytes) => {
            let json = proto_to_json(&input, &bytes).expect("accepted JSON encodes to a message that decodes");
            let again = json_to_proto(&input, &json).expect("the JSON written back is accepted");
            assert_eq!(again, bytes, "the round trip keeps the message");
        }
        Err(error) => {
            assert_eq!(error.reason(), "INVALID_ARGUMENT");
            let wxauth::error::ApiError::InvalidArgument(violations) = &error else { panic!("{error:?}") };
            assert_eq!(violations[0].field, "request");
        }
    }
});
