//! Giving back the space of expunged and archived mail, online.
//!
//! A body whose last message is gone leaves dead bytes in its segment.
//! Reclaim picks the sealed segments that are mostly dead, reads their live
//! bodies in small steps (on the caller's thread, from a snapshot) and has
//! the group writer append them to the open segment, one step per writer
//! message, so deliveries and flag changes interleave with it. Once a
//! durable checkpoint covers the moves, nothing durable refers to the old
//! segments and they are deleted. A crash anywhere before that leaves the
//! old places valid (the moves were not durable); after it, the old
//! segments hold nothing anyone needs. A running backup pins the segments:
//! they are then deleted by the next cycle instead.

use std::time::Duration;

use redb::ReadableDatabase;

use super::StoreError;
use super::bodies;
use super::group::Group;

/// Live bytes read and moved per writer step.
const STEP_BYTES: usize = 1 << 20;
/// How long the handle of a deleted segment stays open for readers of
/// older snapshots.
pub const RETIRED_GRACE: Duration = Duration::from_secs(5);
/// Pause between the cuts that give a deleted segment's space back.
pub const RELEASE_PAUSE: Duration = Duration::from_millis(20);
/// Dead bytes for which the open segment is sealed and rewritten.
const OPEN_DEAD_MIN: u64 = 1 << 20;

/// What one reclaim of one group did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReclaimReport {
    /// Segments deleted.
    pub segments: u64,
    /// Live bytes moved out of them.
    pub moved_bytes: u64,
    /// File bytes given back.
    pub freed_bytes: u64,
    /// Emptied segments left for the next cycle (a backup was running).
    pub deferred: u64,
    /// The database file's size before and after a rebuild (`compact`),
    /// when one ran.
    pub db_rebuilt: Option<(u64, u64)>,
}

/// Reclaims the sealed segments of `g` that are at least `dead_percent`
/// dead; calls `pace` between steps (background work yields there).
pub fn reclaim_group(
    g: &Group,
    dead_percent: u8,
    pace: &mut dyn FnMut(),
) -> Result<ReclaimReport, StoreError> {
    let store = &g.bodies;
    store.forget_retired(RETIRED_GRACE, RELEASE_PAUSE);
    let dead_enough = |u: &bodies::SegmentUse| {
        let dead = u.bytes.saturating_sub(u.live);
        dead * 100 >= u.bytes * u64::from(dead_percent) && (!u.open || dead >= OPEN_DEAD_MIN)
    };
    // The open segment holds dead bytes too (after an archive run, most of
    // it may be): seal it when it is worth rewriting, then look again.
    {
        let txn = g.db().begin_read()?;
        for u in bodies::usage(&txn, store)? {
            if u.open && dead_enough(&u) {
                store.seal(u.id)?;
            }
        }
    }
    let chosen: Vec<bodies::SegmentUse> = {
        let txn = g.db().begin_read()?;
        bodies::usage(&txn, store)?
            .into_iter()
            .filter(|u| !u.open && dead_enough(u))
            .collect()
    };
    let mut report = ReclaimReport::default();
    if chosen.is_empty() {
        return Ok(report);
    }
    for seg in &chosen {
        let mut after = None;
        loop {
            let items = {
                let txn = g.db().begin_read()?;
                bodies::live_entries(&txn, store, seg.id, after, STEP_BYTES)?
            };
            let Some(last) = items.last() else { break };
            after = Some(last.offset);
            report.moved_bytes += items.iter().map(|i| i.body.len() as u64).sum::<u64>();
            let t = std::time::Instant::now();
            g.relocate_blocking(items)?;
            store.start_writeback();
            crate::failpoint::hit("reclaim-after-relocate");
            pace();
            // Three times as long for everyone else: a reclaim is never
            // urgent (with as long again, FETCH p99 rose 1.9x during it).
            std::thread::sleep(t.elapsed() * 3);
        }
    }
    // The moves become durable; from here no durable state names the old
    // segments. Their bytes are flushed here first, so that the writer's
    // own fsync in the checkpoint finds little left.
    store.flush_ahead()?;
    g.checkpoint_blocking()?;
    crate::failpoint::hit("reclaim-after-checkpoint");
    let txn = g.db().begin_read()?;
    for seg in &chosen {
        if bodies::has_live(&txn, seg.id)? {
            // A batch that appended to it just before it was sealed
            // committed after our last step: the next cycle moves that
            // body. A segment with a live body is never deleted.
            tracing::info!(
                group = g.id,
                segment = seg.id,
                "segment still live after its reclaim: left for the next cycle"
            );
            continue;
        }
        if store.pinned() {
            report.deferred += 1;
            continue;
        }
        store.retire(seg.id)?;
        crate::failpoint::hit("reclaim-after-delete");
        report.segments += 1;
        report.freed_bytes += seg.bytes;
    }
    drop(txn);
    if report.segments > 0 {
        tracing::info!(
            group = g.id,
            segments = report.segments,
            moved_bytes = report.moved_bytes,
            freed_bytes = report.freed_bytes,
            "body segments reclaimed"
        );
    }
    Ok(report)
}
