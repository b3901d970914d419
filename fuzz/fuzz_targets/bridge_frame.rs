//! Fuzzes the bridge wire format (`shmesh_bridge::wire`): every byte of a frame comes from the
//! network. Decoding must report problems, never panic; whatever decodes must re-encode to the
//! same bytes (the encoding is canonical, so a decoder cannot silently accept and drop
//! anything). The input is tried as a whole frame, as a header, as each payload type, and as a
//! payload wrapped in a valid frame (so `Frame::body` is reached despite the checksum).
#![no_main]

use shmesh_bridge::wire::{
    self, DataPayload, FrameType, Hello, LifecyclePayload, Offer, Reason, RegionEndPayload,
    RegionPartPayload,
};

fn reencodes(data: &[u8]) {
    if let Ok(frame) = wire::decode(data) {
        let h = frame.header;
        let mut again = Vec::new();
        wire::encode(&mut again, h.kind, h.stream, h.seq, h.aux, frame.payload)
            .expect("a decoded frame re-encodes");
        assert_eq!(again, data);
        let _ = frame.body();
    }
    if let Ok(v) = Hello::decode(data) {
        assert_eq!(v.encode().expect("a decoded hello re-encodes"), data);
    }
    if let Ok(v) = Offer::decode(data) {
        assert_eq!(v.encode().expect("a decoded offer re-encodes"), data);
    }
    if let Ok(v) = Reason::decode(data) {
        assert_eq!(v.encode(), data);
    }
    if let Ok(v) = DataPayload::decode(data) {
        assert_eq!(v.encode(), data);
    }
    if let Ok(v) = RegionPartPayload::decode(data) {
        assert_eq!(v.encode(), data);
    }
    if let Ok(v) = RegionEndPayload::decode(data) {
        assert_eq!(v.encode(), data);
    }
    if let Ok(v) = LifecyclePayload::decode(data) {
        assert_eq!(v.encode(), data);
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(header) = wire::decode_header(data) {
        assert!(wire::frame_len(&header) >= wire::HEADER_LEN + wire::TRAILER_LEN);
    }
    reencodes(data);

    // The first byte picks a frame type; the rest is its payload inside a valid frame.
    if let Some((&code, payload)) = data.split_first() {
        // Codes 1..=13 are frame types (0 is none).
        if let Some(kind) = FrameType::from_code(code % 14) {
            let stream = if kind.is_connection_level() { 0 } else { 1 };
            let mut frame = Vec::new();
            if wire::encode(&mut frame, kind, stream, 0, 0, payload).is_ok() {
                let decoded = wire::decode(&frame).expect("an encoded frame decodes");
                assert_eq!(decoded.payload, payload);
                let _ = decoded.body();
                reencodes(&frame);
            }
        }
    }
});
