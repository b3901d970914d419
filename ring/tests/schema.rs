//! The schema fingerprint and description in the segment header: stored by the creator,
//! required by openers, and a refused opener leaves a note the creator can report.
#![cfg(not(miri))]

use shmesh_ring::{SchemaId, SegmentBuilder, SegmentError};

fn name(test: &str) -> String {
    format!("schema.{test}.{}", std::process::id())
}

const OURS: [u64; 4] = [1, 2, 3, 4];
const THEIRS: [u64; 4] = [1, 2, 3, 5];

#[test]
fn an_opener_with_the_same_fingerprint_gets_in_and_sees_the_description() {
    let n = name("same");
    let seg = SegmentBuilder::new(&n)
        .capacity(4096)
        .schema(OURS)
        .schema_text("app::Reading v1")
        .create()
        .unwrap();
    let opened = SegmentBuilder::new(&n).schema(OURS).open().unwrap();
    assert_eq!(
        opened.schema(),
        SchemaId {
            fingerprint: OURS,
            text: "app::Reading v1".into()
        }
    );
    assert_eq!(seg.schema_rejections(), 0);
    assert_eq!(seg.last_rejection(), None);
}

#[test]
fn an_opener_with_another_fingerprint_is_refused_and_leaves_a_note() {
    let n = name("other");
    let seg = SegmentBuilder::new(&n)
        .capacity(4096)
        .schema(OURS)
        .schema_text("app::Reading v1")
        .create()
        .unwrap();
    let err = SegmentBuilder::new(&n)
        .schema(THEIRS)
        .schema_text("app::Command v1")
        .open()
        .unwrap_err();
    match &err {
        SegmentError::SchemaMismatch(m) => {
            let (ours, theirs) = (&m.ours, &m.theirs);
            assert_eq!(ours.fingerprint, THEIRS);
            assert_eq!(ours.text, "app::Command v1");
            assert_eq!(theirs.fingerprint, OURS);
            assert_eq!(theirs.text, "app::Reading v1");
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("app::Reading v1") && message.contains("app::Command v1"));
    assert_eq!(seg.schema_rejections(), 1);
    let note = seg.last_rejection().unwrap();
    assert_eq!(note.count, 1);
    assert_eq!(note.pid, std::process::id());
    assert_eq!(note.schema.fingerprint, THEIRS);
    assert_eq!(note.schema.text, "app::Command v1");
}

#[test]
fn an_opener_that_requires_no_fingerprint_gets_in_whatever_the_segment_holds() {
    let n = name("any");
    let _seg = SegmentBuilder::new(&n)
        .capacity(4096)
        .schema(OURS)
        .create()
        .unwrap();
    let opened = SegmentBuilder::new(&n).open().unwrap();
    assert_eq!(opened.schema().fingerprint, OURS);
    assert_eq!(opened.schema().text, "");
}
