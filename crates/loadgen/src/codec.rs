//! A tonic codec that sends already-encoded requests, so the generator spends its core on
//! sending rather than on encoding.

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use telemetry_gateway_proto::v1::RecordEventsResponse;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Encodes `Bytes` as-is; decodes `RecordEventsResponse`s.
#[derive(Debug, Default, Clone, Copy)]
pub struct PreEncodedCodec;

impl Codec for PreEncodedCodec {
    type Encode = Bytes;
    type Decode = RecordEventsResponse;
    type Encoder = PassThrough;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> PassThrough {
        PassThrough
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

/// Writes pre-encoded bytes.
#[derive(Debug)]
pub struct PassThrough;

impl Encoder for PassThrough {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

/// Decodes responses with prost.
#[derive(Debug)]
pub struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = RecordEventsResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<RecordEventsResponse>, Status> {
        let response = RecordEventsResponse::decode(src.copy_to_bytes(src.remaining()))
            .map_err(|err| Status::internal(err.to_string()))?;
        Ok(Some(response))
    }
}
