//! Recovery (in progress).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RecoveryReport {
    pub actions: Vec<RecoveryAction>,
}
#[derive(Debug, Clone, serde::Serialize)]
pub enum RecoveryAction {
    /// A torn tail was cut off the last segment of a class.
    TruncatedTail {
        class: String,
        segment: String,
        from_offset: u64,
        bytes: u64,
    },
    /// A segment with corrupt frames was copied to quarantine/ and rewritten with the frames
    /// that still check; `records_lost` records in the damaged frames were counted as dropped.
    Quarantined {
        class: String,
        segment: String,
        quarantine_path: String,
        records_lost: u64,
    },
}
