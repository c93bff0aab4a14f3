//! Reader (in progress).
use super::*;
pub struct Reader;
impl Reader {
    /// Next records from the reader's position: at most `max_records`, and stops after the
    /// record that crosses `max_bytes` (logical). Empty when caught up with the committed end.
    pub fn read_batch(
        &mut self,
        _max_records: usize,
        _max_bytes: usize,
    ) -> Result<Vec<StoredRecord>> {
        unimplemented!()
    }
    /// The sequence the next read starts at.
    pub fn next_seq(&self) -> u64 {
        unimplemented!()
    }
    /// Moves the reader (e.g. back to the acknowledged position after a producer reset).
    pub fn seek(&mut self, _seq: u64) {
        unimplemented!()
    }
}
