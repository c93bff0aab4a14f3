//! The ~200 B JSON telemetry record the benches share (varied like a real fleet: ids, values,
//! timestamps differ), so store and forwarder figures are measured on the same data.

use bytes::Bytes;
use ferry::store::Record;

pub fn telemetry(i: u64) -> Record {
    let payload = format!(
        "{{\"device\":\"plc-{:04}\",\"ts\":{},\"line\":{},\"temp_c\":{:.2},\"pressure_kpa\":{:.1},\"rpm\":{},\"state\":\"{}\",\"seq\":{}}}",
        i % 500,
        1_763_000_000_000u64 + i * 10,
        i % 12,
        20.0 + ((i * 7919) % 1000) as f64 / 37.0,
        101.0 + ((i * 104729) % 500) as f64 / 10.0,
        1400 + (i * 31) % 200,
        ["running", "idle", "warming"][(i % 3) as usize],
        i
    );
    Record {
        timestamp_ms: 1_763_000_000_000 + i * 10,
        topic: format!(
            "site/hall{}/line{}/plc-{:04}/telemetry",
            i % 3,
            i % 12,
            i % 500
        ),
        qos: 1,
        retain: false,
        client_id: format!("plc-{:04}", i % 500),
        user_properties: vec![],
        content_type: None,
        payload: Bytes::from(payload),
    }
}
