//! gRPC message framing as the budget reads it: the 5-byte message header, the request's
//! `grpc-encoding`, and decompression that never goes past a known bound.

use std::io::Read;

use bytes::{Bytes, BytesMut};

use crate::error::ServerError;
use crate::skim::{Root, Shape, Skim, SkimError};

/// The gRPC message header: a compression flag and a big-endian u32 length.
pub const HEADER_LEN: usize = 5;

/// The memory of a gzip decoder, charged with the compressed bytes.
const GZIP_STATE_BYTES: usize = 64 * 1024;

/// The largest zstd window accepted (8 MiB), and the decoder memory charged for it.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;
const ZSTD_STATE_BYTES: usize = (1 << ZSTD_WINDOW_LOG_MAX) + 256 * 1024;

/// Decompression works in chunks of this size.
const DECODE_CHUNK: usize = 64 * 1024;

/// A message header, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    /// The message is compressed with the request's encoding.
    pub compressed: bool,
    /// The message's length on the wire.
    pub len: usize,
}

impl MessageHeader {
    /// Reads a header's 5 bytes.
    pub fn parse(bytes: [u8; HEADER_LEN]) -> MessageHeader {
        MessageHeader {
            compressed: bytes[0] & 1 == 1,
            len: u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize,
        }
    }
}

/// A request's `grpc-encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// None.
    Identity,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
    /// One the gateway does not accept.
    Unsupported,
}

impl Encoding {
    /// The encoding a `grpc-encoding` header value names.
    pub fn from_header(value: Option<&str>) -> Encoding {
        match value {
            None | Some("identity") => Encoding::Identity,
            Some("gzip") => Encoding::Gzip,
            Some("zstd") => Encoding::Zstd,
            Some(_) => Encoding::Unsupported,
        }
    }

    /// Whether compressed messages can be read in this encoding.
    pub fn decompresses(self) -> bool {
        matches!(self, Encoding::Gzip | Encoding::Zstd)
    }

    /// The decoder memory charged with a compressed message.
    pub fn state_bytes(self) -> usize {
        match self {
            Encoding::Zstd => ZSTD_STATE_BYTES,
            _ => GZIP_STATE_BYTES,
        }
    }
}

/// The refusal of a compressed message in a request without a usable encoding.
pub fn no_encoding() -> ServerError {
    ServerError::Malformed("a compressed message without a supported grpc-encoding".into())
}

/// A failed decompression (or its task) as the sender's refusal.
pub fn malformed(err: impl std::fmt::Display) -> ServerError {
    ServerError::Malformed(format!("decompressing: {err}"))
}

/// A skim error as the sender's refusal.
pub fn skim_error(err: SkimError) -> ServerError {
    match err {
        SkimError::TooManyEvents(max) => ServerError::TooManyEvents { max },
        SkimError::Malformed(what) => ServerError::Malformed(what.into()),
    }
}

/// Decompresses `input`, handing the output to `out` in chunks, and refuses it past `max` bytes.
/// Returns the decoded length.
pub fn decompress(
    encoding: Encoding,
    input: &[u8],
    max: usize,
    mut out: impl FnMut(&[u8]) -> Result<(), ServerError>,
) -> Result<usize, ServerError> {
    let mut reader: Box<dyn Read> = match encoding {
        Encoding::Gzip => Box::new(flate2::read::GzDecoder::new(input)),
        Encoding::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(input).map_err(malformed)?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(malformed)?;
            Box::new(decoder)
        }
        Encoding::Identity | Encoding::Unsupported => return Err(no_encoding()),
    };
    let mut chunk = vec![0u8; DECODE_CHUNK];
    let mut total = 0usize;
    loop {
        let n = reader.read(&mut chunk).map_err(malformed)?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
        if total > max {
            return Err(ServerError::DecompressedTooLarge { max });
        }
        out(&chunk[..n])?;
    }
}

/// Skims a compressed message by decompressing it without keeping the output.
pub fn skim_compressed(
    encoding: Encoding,
    input: &[u8],
    max: usize,
    root: Root,
    max_events: usize,
) -> Result<(usize, Shape), ServerError> {
    let mut skim = Skim::new(root, None, max_events);
    let len = decompress(encoding, input, max, |chunk| {
        skim.feed(chunk).map_err(skim_error)
    })?;
    let shape = skim.finish(len).map_err(skim_error)?;
    Ok((len, shape))
}

/// Decompresses a message whose length is known into a gRPC frame marked uncompressed.
pub fn decompress_to_frame(
    encoding: Encoding,
    input: &[u8],
    len: usize,
) -> Result<Bytes, ServerError> {
    let mut frame = BytesMut::with_capacity(HEADER_LEN + len);
    frame.extend_from_slice(&[0]);
    frame.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    decompress(encoding, input, len, |chunk| {
        frame.extend_from_slice(chunk);
        Ok(())
    })?;
    Ok(frame.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_encodings_are_read() {
        assert_eq!(
            MessageHeader::parse([1, 0, 0, 0x01, 0x00]),
            MessageHeader {
                compressed: true,
                len: 256
            }
        );
        assert!(!MessageHeader::parse([0, 0xff, 0xff, 0xff, 0xff]).compressed);
        assert_eq!(Encoding::from_header(None), Encoding::Identity);
        assert_eq!(Encoding::from_header(Some("zstd")), Encoding::Zstd);
        assert_eq!(Encoding::from_header(Some("br")), Encoding::Unsupported);
        assert!(!Encoding::Unsupported.decompresses());
        assert_eq!(
            decompress(Encoding::Identity, b"", 10, |_| Ok(())),
            Err(no_encoding())
        );
    }

    #[test]
    fn decompression_stops_at_the_limit() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![0u8; 1 << 20]).expect("in memory");
        let bomb = encoder.finish().expect("in memory");
        let mut seen = 0;
        let result = decompress(Encoding::Gzip, &bomb, 100_000, |chunk| {
            seen += chunk.len();
            Ok(())
        });
        assert_eq!(
            result,
            Err(ServerError::DecompressedTooLarge { max: 100_000 })
        );
        assert!(seen <= 100_000, "nothing past the limit is handed on");
        let zstd = zstd::encode_all(&vec![7u8; 1000][..], 3).expect("in memory");
        let frame = decompress_to_frame(Encoding::Zstd, &zstd, 1000).expect("decodes");
        assert_eq!(frame.len(), HEADER_LEN + 1000);
        assert_eq!(&frame[..HEADER_LEN], &[0, 0, 0, 0x03, 0xe8]);
    }
}
