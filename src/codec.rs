//! The protobuf codec of the wxauth service: prost's, except that a request body that does not
//! decode as the RPC's message is the caller's fault, answered `INVALID_ARGUMENT` with the
//! service's error details (`ErrorInfo{reason: "INVALID_ARGUMENT", domain: "wxauth.dev"}`).
//! tonic's `ProstCodec` answers `INTERNAL`, which docs/api.md keeps for bugs in wxauth: any peer
//! sending garbage would page whoever watches INTERNAL. `build.rs` names this codec for the
//! generated code (`codec_path`), so every RPC of the service uses it; the generated client
//! uses it too (a reply it cannot decode is then INVALID_ARGUMENT on the client's side).

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use crate::error::ApiError;

/// [`ProstCodec`] with [`ProtoDecoder`]'s answer to a body that does not decode.
#[derive(Debug, Clone)]
pub struct ProtoCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder(self.0.decoder())
    }
}

/// prost's decoder; a message that does not decode is `INVALID_ARGUMENT`, counted in
/// `wxauth_malformed_requests_total{reason="undecodable_message"}`.
#[derive(Debug, Clone)]
pub struct ProtoDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        // prost's decoder fails only when the bytes are not the message.
        self.0.decode(buf).map_err(|status| undecodable(&status))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// The answer to a message that does not decode. prost's reason (a field path and what is
/// wrong with it, never a value) goes to the debug log: any peer can send garbage, so no louder.
fn undecodable(status: &Status) -> Status {
    tracing::debug!(cause = status.message(), "request message does not decode");
    crate::telemetry::count_malformed_request("undecodable_message");
    ApiError::MalformedMessage.to_status()
}
