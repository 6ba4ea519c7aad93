//! Streaming encoders (gzip, brotli, zstd) for response-compression's downstream module:
//! every chunk is compressed and flushed as it arrives.

use super::negotiate::Algo;
use bytes::Bytes;
use std::io::Write;

/// brotli window bits for unknown or large bodies: 512 KiB, ngx_brotli's default
/// (`brotli_window 512k`); brotli's own default (4 MiB) costs that much memory per response.
const BR_MAX_WINDOW_BITS: u32 = 19;
/// zstd window for unknown or large bodies: 1 MiB (level 3's default is 2 MiB).
const ZSTD_MAX_WINDOW_LOG: u32 = 20;

/// Window bits that cover `n` bytes, between `min` and `max`.
fn window_bits(n: u64, min: u32, max: u32) -> u32 {
    let bits = 64 - n.max(1).saturating_sub(1).leading_zeros();
    bits.clamp(min, max)
}

enum Kind {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    // The zstd context is `Send` but not `Sync`, and a Pingora module must be both: the
    // (uncontended) lock is what makes it `Sync`.
    Zstd(parking_lot::Mutex<zstd::stream::write::Encoder<'static, Vec<u8>>>),
    Finished,
}

/// A streaming encoder: [`Encoder::encode`] takes each chunk and returns what may be sent
/// now (everything the chunk contributed: each call flushes), and at `end` the rest of the
/// stream.
pub struct Encoder {
    algo: Algo,
    kind: Kind,
    bytes_in: u64,
    bytes_out: u64,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("algo", &self.algo)
            .field("bytes_in", &self.bytes_in)
            .field("bytes_out", &self.bytes_out)
            .finish()
    }
}

impl Encoder {
    /// An encoder for `algo` at `level` (validated at load); `size_hint` is the body's
    /// length when known, which lets brotli and zstd use a window no larger than the body.
    pub fn new(algo: Algo, level: u32, size_hint: Option<u64>) -> std::io::Result<Encoder> {
        let kind = match algo {
            Algo::Gzip => Kind::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level),
            )),
            Algo::Br => {
                let lgwin = match size_hint {
                    // brotli's window holds 16 bytes less than 2^lgwin.
                    Some(n) => window_bits(n.saturating_add(16), 10, BR_MAX_WINDOW_BITS),
                    None => BR_MAX_WINDOW_BITS,
                };
                let params = brotli::enc::BrotliEncoderParams {
                    quality: level as i32,
                    lgwin: lgwin as i32,
                    size_hint: size_hint.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX)),
                    ..Default::default()
                };
                Kind::Br(Box::new(brotli::CompressorWriter::with_params(
                    Vec::new(),
                    4096,
                    &params,
                )))
            }
            Algo::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), level as i32)?;
                match size_hint {
                    // The exact length lets zstd size its tables for the body (a 2 KB body
                    // then costs a third of the time) and records it in the frame. The body
                    // is the `Content-Length` answer's, which Pingora holds to that length;
                    // a mismatch would fail the stream at its end, never corrupt it.
                    Some(n) => e.set_pledged_src_size(Some(n))?,
                    None => e.window_log(ZSTD_MAX_WINDOW_LOG)?,
                }
                Kind::Zstd(parking_lot::Mutex::new(e))
            }
        };
        Ok(Encoder {
            algo,
            kind,
            bytes_in: 0,
            bytes_out: 0,
        })
    }

    pub fn algo(&self) -> Algo {
        self.algo
    }

    /// (identity bytes in, encoded bytes out) so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.bytes_in, self.bytes_out)
    }

    /// Compresses `input`; with `end`, finishes the stream. Returns the bytes to send now
    /// (possibly empty; an encoder that already finished returns nothing).
    pub fn encode(&mut self, input: &[u8], end: bool) -> std::io::Result<Bytes> {
        self.bytes_in += input.len() as u64;
        // Room for what this chunk will likely add, without over-reserving for big chunks.
        let reserve = (input.len() / 3).min(64 * 1024) + 64;
        let out: Vec<u8> = match &mut self.kind {
            Kind::Finished => return Ok(Bytes::new()),
            Kind::Gzip(e) => {
                e.get_mut().reserve(reserve);
                e.write_all(input)?;
                if end {
                    e.try_finish()?;
                } else if !input.is_empty() {
                    e.flush()?;
                }
                std::mem::take(e.get_mut())
            }
            Kind::Br(e) => {
                e.get_mut().reserve(reserve);
                e.write_all(input)?;
                if !end {
                    if !input.is_empty() {
                        e.flush()?;
                    }
                    std::mem::take(e.get_mut())
                } else {
                    // Only consuming the writer emits the final meta-block (a flush does not).
                    let Kind::Br(e) = std::mem::replace(&mut self.kind, Kind::Finished) else {
                        return Ok(Bytes::new());
                    };
                    e.into_inner()
                }
            }
            Kind::Zstd(e) => {
                let e = e.get_mut();
                e.get_mut().reserve(reserve);
                e.write_all(input)?;
                if end {
                    e.do_finish()?;
                } else if !input.is_empty() {
                    e.flush()?;
                }
                std::mem::take(e.get_mut())
            }
        };
        if end {
            self.kind = Kind::Finished;
        }
        self.bytes_out += out.len() as u64;
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn decode(algo: Algo, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match algo {
            Algo::Gzip => {
                flate2::read::GzDecoder::new(data)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Algo::Br => {
                brotli::Decompressor::new(data, 4096)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Algo::Zstd => {
                zstd::stream::read::Decoder::new(data)
                    .unwrap()
                    .read_to_end(&mut out)
                    .unwrap();
            }
        }
        out
    }

    fn body(n: usize) -> Vec<u8> {
        let mut b = Vec::new();
        let mut i = 0;
        while b.len() < n {
            b.extend_from_slice(format!("{{\"id\":{i},\"name\":\"item {i}\"}},").as_bytes());
            i += 1;
        }
        b.truncate(n);
        b
    }

    #[test]
    fn encoders_round_trip_in_chunks() {
        let input = body(300_000);
        for algo in Algo::ALL {
            for hint in [None, Some(input.len() as u64)] {
                let mut e = Encoder::new(algo, *algo.levels().start().max(&3), hint).unwrap();
                let mut out = Vec::new();
                for chunk in input.chunks(16 * 1024) {
                    out.extend_from_slice(&e.encode(chunk, false).unwrap());
                }
                out.extend_from_slice(&e.encode(&[], true).unwrap());
                assert_eq!(decode(algo, &out), input, "{algo:?} {hint:?}");
                assert!(out.len() < input.len() / 4, "{algo:?}: {}", out.len());
                assert_eq!(e.totals(), (input.len() as u64, out.len() as u64));
                // Finished: nothing more.
                assert!(e.encode(b"x", true).unwrap().is_empty());
            }
        }
    }

    #[test]
    fn every_chunk_is_flushed() {
        // What was sent so far decodes to everything given so far: nothing is held back.
        for algo in Algo::ALL {
            let mut e = Encoder::new(algo, 5, None).unwrap();
            let first = e.encode(b"{\"event\":\"first\"}\n", false).unwrap();
            assert!(!first.is_empty(), "{algo:?}");
            let mut partial = Vec::new();
            match algo {
                Algo::Gzip => {
                    let mut d = flate2::write::GzDecoder::new(Vec::new());
                    d.write_all(&first).unwrap();
                    d.flush().unwrap();
                    partial = d.get_ref().clone();
                }
                Algo::Br => {
                    let mut d = brotli::DecompressorWriter::new(Vec::new(), 4096);
                    d.write_all(&first).unwrap();
                    d.flush().unwrap();
                    partial = d.get_ref().clone();
                }
                Algo::Zstd => {
                    let mut d = zstd::stream::write::Decoder::new(Vec::new()).unwrap();
                    d.write_all(&first).unwrap();
                    d.flush().unwrap();
                    partial.extend_from_slice(d.get_ref());
                }
            }
            assert_eq!(partial, b"{\"event\":\"first\"}\n", "{algo:?}");
        }
    }

    #[test]
    fn empty_and_one_shot_bodies() {
        for algo in Algo::ALL {
            let mut e = Encoder::new(algo, 4, Some(0)).unwrap();
            let out = e.encode(&[], true).unwrap();
            assert!(!out.is_empty(), "{algo:?}: a valid empty stream");
            assert_eq!(decode(algo, &out), b"");
            let input = body(2048);
            let mut e = Encoder::new(algo, 4, Some(2048)).unwrap();
            let out = e.encode(&input, true).unwrap();
            assert_eq!(decode(algo, &out), input);
        }
    }

    #[test]
    fn zstd_body_shorter_than_its_length_fails_at_the_end() {
        let mut e = Encoder::new(Algo::Zstd, 3, Some(100)).unwrap();
        assert!(e.encode(&[b'a'; 50], false).is_ok());
        assert!(e.encode(&[], true).is_err());
    }

    #[test]
    fn window_sizes() {
        assert_eq!(window_bits(0, 10, 19), 10);
        assert_eq!(window_bits(1024, 10, 19), 10);
        assert_eq!(window_bits(1025, 10, 19), 11);
        assert_eq!(window_bits(200_000, 10, 19), 18);
        assert_eq!(window_bits(u64::MAX, 10, 19), 19);
    }
}
