//! The gRPC codec of every fleet service: prost, with small initial buffers.
//!
//! tonic's default codec allocates an 8 KiB encode and an 8 KiB decode buffer for every
//! stream when it opens. The controller holds one stream per agent whose messages are
//! heartbeats and state reports of a few hundred bytes, so at 50,000 agents the default
//! would keep ~800 MiB of mostly empty buffers. A buffer still grows for a larger
//! message (a release chunk) as it must.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Initial size of each stream's encode and decode buffer.
const BUFFER: usize = 1024;
/// tonic's default: how much encoded data a stream buffers before yielding it.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER, YIELD_THRESHOLD)
}

/// Named by the generated code (`codec_path` in `tests/codegen.rs`).
pub struct FleetCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for FleetCodec<T, U> {
    fn default() -> Self {
        FleetCodec(PhantomData)
    }
}

impl<T, U> Codec for FleetCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
