//! Group commit (in progress).
use super::*;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pub struct CommitTicket(tokio::sync::oneshot::Receiver<Result<u64>>);

impl Future for CommitTicket {
    type Output = Result<u64>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StoreError::Closed)))
    }
}

pub(crate) struct Shared;
impl Shared {
    pub fn open(_o: StoreOptions) -> Result<(Arc<Shared>, RecoveryReport)> {
        unimplemented!()
    }
    pub fn class_names(&self) -> Vec<String> {
        unimplemented!()
    }
    pub fn class_id(&self, _n: &str) -> Option<ClassId> {
        unimplemented!()
    }
    pub fn append(&self, _c: ClassId, _r: Record) -> Result<CommitTicket> {
        unimplemented!()
    }
    pub fn reader(&self, _c: ClassId, _s: u64) -> Result<Reader> {
        unimplemented!()
    }
    pub fn committed(&self, _c: ClassId) -> u64 {
        unimplemented!()
    }
    pub fn subscribe(&self, _c: ClassId) -> tokio::sync::watch::Receiver<u64> {
        unimplemented!()
    }
    pub fn ack(&self, _c: ClassId, _p: Position) -> Result<()> {
        unimplemented!()
    }
    pub fn acked(&self, _c: ClassId) -> Position {
        unimplemented!()
    }
    pub fn stats(&self) -> Vec<ClassStats> {
        unimplemented!()
    }
    pub fn enforce_retention(&self, _n: u64) -> Result<()> {
        unimplemented!()
    }
    pub fn purge(&self, _c: ClassId, _o: Option<u64>) -> Result<(u64, u64)> {
        unimplemented!()
    }
    pub fn close(&self) -> Result<()> {
        unimplemented!()
    }
}
