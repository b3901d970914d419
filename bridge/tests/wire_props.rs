//! Property tests of the bridge wire format: decoding never panics on any bytes, catches every
//! single-bit corruption and every truncation of a valid frame, and every payload type
//! round-trips (and re-encodes what it decoded to the same bytes).

use proptest::collection::{btree_set, vec};
use proptest::prelude::*;
use shmesh_bridge::wire::{
    self, Body, DataPayload, FrameType, Hello, ImportReq, LifecyclePayload, Offer, OfferKind,
    Reason, RegionEndPayload, RegionPartPayload, RingEnd, WireError, HEADER_LEN, PROTOCOL_VERSION,
    TRAILER_LEN,
};
use shmesh_ring::BroadcastPolicy;

const ALL_TYPES: [FrameType; 13] = [
    FrameType::Hello,
    FrameType::Offer,
    FrameType::Refuse,
    FrameType::Ready,
    FrameType::Data,
    FrameType::Ack,
    FrameType::Resend,
    FrameType::RegionPart,
    FrameType::RegionEnd,
    FrameType::Ping,
    FrameType::Pong,
    FrameType::Close,
    FrameType::Lifecycle,
];

/// The fields of a frame that obeys the header rules (its payload bytes are arbitrary: the
/// frame layer does not look inside them).
#[derive(Debug, Clone)]
struct FrameSpec {
    kind: FrameType,
    stream: u32,
    seq: u64,
    aux: u64,
    payload: Vec<u8>,
}

fn frame_spec() -> impl Strategy<Value = FrameSpec> {
    (
        proptest::sample::select(ALL_TYPES.to_vec()),
        1..=u32::MAX,
        any::<u64>(),
        any::<u64>(),
        vec(any::<u8>(), 0..300),
    )
        .prop_map(|(kind, stream, seq, aux, payload)| FrameSpec {
            kind,
            stream: if kind.is_connection_level() {
                0
            } else {
                stream
            },
            seq,
            aux: match kind {
                FrameType::Ready => aux & 1,
                FrameType::Lifecycle => 0,
                _ => aux,
            },
            payload: if kind.has_payload() {
                payload
            } else {
                Vec::new()
            },
        })
}

fn encode_spec(spec: &FrameSpec) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode(
        &mut out,
        spec.kind,
        spec.stream,
        spec.seq,
        spec.aux,
        &spec.payload,
    )
    .expect("a spec obeying the header rules encodes");
    out
}

/// Decoding anything must not panic; what decodes must re-encode to the same bytes.
fn decode_everything(bytes: &[u8]) {
    let _ = wire::decode_header(bytes);
    if let Ok(frame) = wire::decode(bytes) {
        let h = frame.header;
        let mut again = Vec::new();
        wire::encode(&mut again, h.kind, h.stream, h.seq, h.aux, frame.payload).unwrap();
        assert_eq!(again, bytes);
        let _ = frame.body();
    }
    if let Ok(v) = Hello::decode(bytes) {
        assert_eq!(v.encode().unwrap(), bytes);
    }
    if let Ok(v) = Offer::decode(bytes) {
        assert_eq!(v.encode().unwrap(), bytes);
    }
    if let Ok(v) = Reason::decode(bytes) {
        assert_eq!(v.encode(), bytes);
    }
    if let Ok(v) = DataPayload::decode(bytes) {
        assert_eq!(v.encode(), bytes);
    }
    if let Ok(v) = RegionPartPayload::decode(bytes) {
        assert_eq!(v.encode(), bytes);
    }
    if let Ok(v) = RegionEndPayload::decode(bytes) {
        assert_eq!(v.encode(), bytes);
    }
    if let Ok(v) = LifecyclePayload::decode(bytes) {
        assert_eq!(v.encode(), bytes);
    }
}

fn import_reqs() -> impl Strategy<Value = Vec<ImportReq>> {
    btree_set(1..=u32::MAX, 0..20).prop_flat_map(|streams| {
        let n = streams.len();
        (
            Just(streams),
            vec(".{0,20}", n),
            vec(proptest::option::of(any::<u64>()), n),
        )
            .prop_map(|(streams, names, cursors)| {
                streams
                    .into_iter()
                    .zip(names)
                    .zip(cursors)
                    .map(|((stream, name), cursor)| ImportReq {
                        stream,
                        name,
                        cursor,
                    })
                    .collect()
            })
    })
}

fn offer_kind() -> impl Strategy<Value = OfferKind> {
    prop_oneof![
        Just(OfferKind::Spsc),
        Just(OfferKind::Region),
        Just(OfferKind::Broadcast(BroadcastPolicy::Block)),
        Just(OfferKind::Broadcast(BroadcastPolicy::Lap)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..200)) {
        decode_everything(&bytes);
    }

    /// Random bytes behind a valid header reach the payload decoders and the checksum.
    #[test]
    fn random_bodies_behind_valid_headers_never_panic(
        spec in frame_spec(),
        tail in vec(any::<u8>(), 0..200),
    ) {
        let mut bytes = encode_spec(&spec);
        bytes.truncate(HEADER_LEN);
        bytes.extend_from_slice(&tail);
        decode_everything(&bytes);
        decode_everything(&tail);
    }

    #[test]
    fn untouched_frames_decode_to_their_fields(spec in frame_spec()) {
        let bytes = encode_spec(&spec);
        prop_assert_eq!(bytes.len(), HEADER_LEN + spec.payload.len() + TRAILER_LEN);
        let frame = wire::decode(&bytes).unwrap();
        prop_assert_eq!(frame.header.kind, spec.kind);
        prop_assert_eq!(frame.header.stream, spec.stream);
        prop_assert_eq!(frame.header.len as usize, spec.payload.len());
        prop_assert_eq!(frame.header.seq, spec.seq);
        prop_assert_eq!(frame.header.aux, spec.aux);
        prop_assert_eq!(frame.payload, &spec.payload[..]);
        let header = wire::decode_header(&bytes[..HEADER_LEN]).unwrap();
        prop_assert_eq!(header, frame.header);
        prop_assert_eq!(wire::frame_len(&header), bytes.len());
    }

    /// CRC-32 detects every single-bit error, so flipping any bit of a frame (header, payload
    /// or the checksum itself) makes decode fail.
    #[test]
    fn every_single_bit_flip_is_rejected(spec in frame_spec()) {
        let bytes = encode_spec(&spec);
        let mut damaged = bytes.clone();
        for bit in 0..bytes.len() * 8 {
            damaged[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(wire::decode(&damaged).is_err(), "bit {} flipped decodes", bit);
            decode_everything(&damaged);
            damaged[bit / 8] ^= 1 << (bit % 8);
        }
        prop_assert_eq!(damaged, bytes);
    }

    #[test]
    fn every_truncation_is_rejected(spec in frame_spec()) {
        let bytes = encode_spec(&spec);
        for len in 0..bytes.len() {
            prop_assert!(wire::decode(&bytes[..len]).is_err(), "cut at {} decodes", len);
            prop_assert_eq!(wire::decode_header(&bytes[..len]).is_ok(), len >= HEADER_LEN);
        }
    }

    #[test]
    fn hello_round_trips(name in ".{0,40}", imports in import_reqs()) {
        let hello = Hello { version: PROTOCOL_VERSION, name, imports };
        let payload = hello.encode().unwrap();
        prop_assert_eq!(Hello::decode(&payload).unwrap(), hello.clone());
        let mut out = Vec::new();
        wire::encode(&mut out, FrameType::Hello, 0, 0, 0, &payload).unwrap();
        prop_assert_eq!(wire::decode(&out).unwrap().body().unwrap(), Body::Hello(hello));
        // Every strict prefix of the payload is refused.
        for len in 0..payload.len() {
            prop_assert!(Hello::decode(&payload[..len]).is_err());
        }
    }

    #[test]
    fn offer_round_trips(
        kind in offer_kind(),
        capacity in any::<u64>(),
        fingerprint in any::<[u64; 4]>(),
        schema in ".{0,60}",
        (history, buffers, chunk_size) in any::<(u32, u32, u32)>(),
    ) {
        let offer = Offer { kind, capacity, fingerprint, schema, history, buffers, chunk_size };
        let payload = offer.encode().unwrap();
        prop_assert_eq!(Offer::decode(&payload).unwrap(), offer.clone());
        let mut out = Vec::new();
        wire::encode(&mut out, FrameType::Offer, 5, 0, 0, &payload).unwrap();
        prop_assert_eq!(wire::decode(&out).unwrap().body().unwrap(), Body::Offer(offer));
        for len in 0..payload.len() {
            prop_assert!(Offer::decode(&payload[..len]).is_err());
        }
    }

    #[test]
    fn reasons_round_trip(text in ".{0,80}", close in any::<bool>()) {
        let reason = Reason::new(text);
        let payload = reason.encode();
        prop_assert_eq!(Reason::decode(&payload).unwrap(), reason.clone());
        let (kind, stream) = if close { (FrameType::Close, 0) } else { (FrameType::Refuse, 3) };
        let mut out = Vec::new();
        wire::encode(&mut out, kind, stream, 0, 0, &payload).unwrap();
        let body = wire::decode(&out).unwrap().body().unwrap();
        prop_assert_eq!(body, if close { Body::Close(reason) } else { Body::Refuse(reason) });
    }

    #[test]
    fn data_round_trips(
        stream in 1..=u32::MAX,
        (before, after) in any::<(u64, u64)>(),
        record_kind in any::<u32>(),
        bytes in vec(any::<u8>(), 0..500),
    ) {
        let payload = DataPayload { record_kind, bytes: &bytes };
        let encoded = payload.encode();
        prop_assert_eq!(DataPayload::decode(&encoded).unwrap(), payload);
        // encode_data writes the same frame as encode with a built payload.
        let mut direct = Vec::new();
        wire::encode_data(&mut direct, stream, before, after, record_kind, &bytes).unwrap();
        let mut built = Vec::new();
        wire::encode(&mut built, FrameType::Data, stream, before, after, &payload.encode())
            .unwrap();
        prop_assert_eq!(&direct, &built);
        let body = wire::decode(&direct).unwrap().body().unwrap();
        prop_assert_eq!(body, Body::Data { before, after, payload });
    }

    #[test]
    fn region_frames_round_trip(
        stream in 1..=u32::MAX,
        (version, base, offset, size) in any::<(u64, u64, u64, u64)>(),
        bytes in vec(any::<u8>(), 0..500),
    ) {
        let part = RegionPartPayload { offset, bytes: &bytes };
        let encoded = part.encode();
        prop_assert_eq!(RegionPartPayload::decode(&encoded).unwrap(), part);
        let mut direct = Vec::new();
        wire::encode_region_part(&mut direct, stream, version, base, offset, &bytes).unwrap();
        let mut built = Vec::new();
        wire::encode(&mut built, FrameType::RegionPart, stream, version, base, &part.encode())
            .unwrap();
        prop_assert_eq!(&direct, &built);
        let body = wire::decode(&direct).unwrap().body().unwrap();
        prop_assert_eq!(body, Body::RegionPart { version, base, payload: part });

        let end = RegionEndPayload { size, parts: offset, bytes: version };
        prop_assert_eq!(RegionEndPayload::decode(&end.encode()).unwrap(), end);
        let mut out = Vec::new();
        wire::encode(&mut out, FrameType::RegionEnd, stream, version, base, &end.encode())
            .unwrap();
        let body = wire::decode(&out).unwrap().body().unwrap();
        prop_assert_eq!(body, Body::RegionEnd { version, base, payload: end });
    }

    #[test]
    fn lifecycle_round_trips_and_rejects_every_other_byte_value(
        stream in 1..=u32::MAX,
        cursor in any::<u64>(),
        reader in any::<bool>(),
        attached in any::<bool>(),
        report in 1..=u64::MAX,
        (at, value) in (0..2usize, 2..=u8::MAX),
        aux in 1..=u64::MAX,
    ) {
        let end = if reader { RingEnd::Reader } else { RingEnd::Writer };
        let payload = LifecyclePayload { end, attached, report };
        let encoded = payload.encode();
        prop_assert_eq!(encoded.len(), 10);
        prop_assert_eq!(LifecyclePayload::decode(&encoded).unwrap(), payload);
        let mut out = Vec::new();
        wire::encode(&mut out, FrameType::Lifecycle, stream, cursor, 0, &encoded).unwrap();
        let body = wire::decode(&out).unwrap().body().unwrap();
        prop_assert_eq!(body, Body::Lifecycle { cursor, payload });
        // The end and attached bytes are 0 or 1, the report number is not 0, the length is
        // exact, and the header's aux is 0.
        let mut bad = encoded.clone();
        bad[at] = value;
        let is_bad_value = matches!(
            LifecyclePayload::decode(&bad),
            Err(WireError::BadValue { .. })
        );
        prop_assert!(is_bad_value);
        let mut zero = encoded.clone();
        zero[2..].fill(0);
        prop_assert!(LifecyclePayload::decode(&zero).is_err());
        for len in 0..encoded.len() {
            prop_assert!(LifecyclePayload::decode(&encoded[..len]).is_err());
        }
        let mut longer = encoded.clone();
        longer.push(0);
        prop_assert!(LifecyclePayload::decode(&longer).is_err());
        prop_assert!(wire::encode(&mut out, FrameType::Lifecycle, stream, cursor, aux, &encoded)
            .is_err());
    }
}
