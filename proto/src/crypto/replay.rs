//! The receiver's defence against replayed messages: a sliding bitmap over
//! the last [`WINDOW`] message counters (as in WireGuard and RFC 6479).
//!
//! The bitmap is a ring of 64-bit words indexed by `counter / 64`; moving
//! the window forward only clears the words it slides over, so a jump far
//! ahead costs at most one pass over the bitmap and nothing allocates.
//! One spare word makes room for exactly `WINDOW` counters behind the
//! highest one even when the window does not start on a word boundary.

/// How far behind the highest counter seen a message may still arrive
/// (reordered by the underlay) and be accepted once.
pub const WINDOW: u64 = 2048;

const WORD_BITS: u64 = u64::BITS as u64;
const WORDS: usize = (WINDOW / WORD_BITS) as usize + 1;

#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    #[error("replayed counter")]
    Duplicate,
    #[error("counter older than the replay window")]
    TooOld,
}

#[derive(Debug, Clone)]
pub struct ReplayWindow {
    highest: Option<u64>,
    bitmap: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow { highest: None, bitmap: [0; WORDS] }
    }
}

impl ReplayWindow {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `counter` may be accepted. Changes nothing: a message is
    /// only recorded once its tag verified ([`commit`](Self::commit)), so
    /// forged messages cannot move the window.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        let Some(highest) = self.highest else { return Ok(()) };
        if counter > highest {
            return Ok(());
        }
        if highest - counter >= WINDOW {
            return Err(ReplayError::TooOld);
        }
        let (word, bit) = slot(counter);
        if self.bitmap[word] & bit != 0 {
            return Err(ReplayError::Duplicate);
        }
        Ok(())
    }

    /// Records `counter` as seen. Call only after [`check`](Self::check)
    /// passed and the message authenticated. A counter that has fallen
    /// out of the window meanwhile is ignored: its word now belongs to a
    /// newer range of counters.
    pub fn commit(&mut self, counter: u64) {
        match self.highest {
            Some(highest) if counter <= highest => {
                if highest - counter >= WINDOW {
                    return;
                }
            }
            Some(highest) => {
                let (old_word, new_word) = (highest / WORD_BITS, counter / WORD_BITS);
                if new_word - old_word >= WORDS as u64 {
                    self.bitmap = [0; WORDS];
                } else {
                    for w in old_word + 1..=new_word {
                        self.bitmap[ring_index(w)] = 0;
                    }
                }
                self.highest = Some(counter);
            }
            None => self.highest = Some(counter),
        }
        let (word, bit) = slot(counter);
        self.bitmap[word] |= bit;
    }

    pub fn highest(&self) -> Option<u64> {
        self.highest
    }
}

fn ring_index(word: u64) -> usize {
    (word % WORDS as u64) as usize
}

fn slot(counter: u64) -> (usize, u64) {
    (ring_index(counter / WORD_BITS), 1 << (counter % WORD_BITS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn accept(w: &mut ReplayWindow, c: u64) -> Result<(), ReplayError> {
        w.check(c)?;
        w.commit(c);
        Ok(())
    }

    #[test]
    fn fresh_window_accepts_anything_once() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.highest(), None);
        assert_eq!(accept(&mut w, 5), Ok(()));
        assert_eq!(accept(&mut w, 5), Err(ReplayError::Duplicate));
        assert_eq!(accept(&mut w, 0), Ok(()));
        assert_eq!(w.highest(), Some(5));
    }

    #[test]
    fn old_and_duplicate_rejected_at_the_exact_edge() {
        let mut w = ReplayWindow::new();
        accept(&mut w, 10_000).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w.check(10_000 - WINDOW), Err(ReplayError::TooOld));
        assert_eq!(accept(&mut w, 10_000 - WINDOW + 1), Ok(()));
        assert_eq!(accept(&mut w, 10_000 - WINDOW + 1), Err(ReplayError::Duplicate));
        assert_eq!(w.check(0), Err(ReplayError::TooOld));
    }

    #[test]
    fn reordering_inside_window_accepted_once() {
        let mut w = ReplayWindow::new();
        let order = [3u64, 1, 2, 0, 100, 50, 2000, 99, 1999];
        for c in order {
            assert_eq!(accept(&mut w, c), Ok(()), "{c}");
        }
        for c in order {
            assert_eq!(accept(&mut w, c), Err(ReplayError::Duplicate), "{c}");
        }
    }

    #[test]
    fn far_ahead_clears_the_whole_bitmap() {
        let mut w = ReplayWindow::new();
        for c in 0..WINDOW {
            accept(&mut w, c).unwrap_or_else(|e| panic!("{c}: {e}"));
        }
        // Every slot was set; after a jump none of the new window's
        // counters may look seen.
        let far = 1_000_000;
        assert_eq!(accept(&mut w, far), Ok(()));
        for c in far - WINDOW + 1..far {
            assert_eq!(w.check(c), Ok(()), "{c}");
        }
        assert_eq!(w.check(WINDOW - 1), Err(ReplayError::TooOld));
    }

    #[test]
    fn partial_advance_clears_only_the_new_words() {
        let mut w = ReplayWindow::new();
        for c in 0..3 * WINDOW {
            accept(&mut w, c).unwrap_or_else(|e| panic!("{c}: {e}"));
        }
        // Slide by less than a window: old counters still in range stay
        // seen, the newly covered ones are fresh.
        let h = 3 * WINDOW - 1 + 700;
        assert_eq!(accept(&mut w, h), Ok(()));
        for c in h - WINDOW + 1..3 * WINDOW {
            assert_eq!(w.check(c), Err(ReplayError::Duplicate), "{c}");
        }
        for c in 3 * WINDOW..h {
            assert_eq!(w.check(c), Ok(()), "{c}");
        }
    }

    #[test]
    fn ring_wraparound_over_many_windows() {
        let mut w = ReplayWindow::new();
        // Strides that are not multiples of 64 or of the ring size, so
        // every word index and bit position comes round repeatedly.
        let mut c = 0u64;
        for step in 0..20_000u64 {
            c += 1 + step % 97;
            assert_eq!(accept(&mut w, c), Ok(()), "{c}");
            assert_eq!(w.check(c), Err(ReplayError::Duplicate));
            let behind = c.saturating_sub(1 + step % 2100);
            if behind < c && c - behind < WINDOW {
                // Either seen already or fresh; accepting it must stick.
                let _ = accept(&mut w, behind);
                assert_eq!(w.check(behind), Err(ReplayError::Duplicate), "{behind}");
            }
        }
    }

    #[test]
    fn counters_near_u64_max() {
        let mut w = ReplayWindow::new();
        let top = u64::MAX;
        assert_eq!(accept(&mut w, top - 5000), Ok(()));
        assert_eq!(accept(&mut w, top - 1), Ok(()));
        assert_eq!(accept(&mut w, top), Ok(()));
        assert_eq!(accept(&mut w, top), Err(ReplayError::Duplicate));
        assert_eq!(w.check(top - 5000), Err(ReplayError::TooOld));
        assert_eq!(accept(&mut w, top - WINDOW + 1), Ok(()));
        assert_eq!(w.check(top - WINDOW), Err(ReplayError::TooOld));
        assert_eq!(w.highest(), Some(top));
    }

    #[test]
    fn check_never_mutates_and_stale_commit_is_ignored() {
        let mut w = ReplayWindow::new();
        accept(&mut w, 4096).unwrap_or_else(|e| panic!("{e}"));
        let before = w.clone();
        for c in [0, 4096, 4097, 1 << 40] {
            let _ = w.check(c);
        }
        assert_eq!(w.bitmap, before.bitmap);
        assert_eq!(w.highest, before.highest);
        // 4096 - 33*64 shares a ring slot with live counters: committing
        // it out of contract must not mark them as seen.
        w.commit(4096 - 33 * 64);
        assert_eq!(w.bitmap, before.bitmap);
    }

    /// Counters that mostly move forward, with reordering, duplicates and
    /// occasional long jumps.
    fn ops() -> impl Strategy<Value = Vec<(u8, u64)>> {
        proptest::collection::vec((0u8..4, 0u64..3 * WINDOW), 1..400)
    }

    proptest! {
        #[test]
        fn matches_a_set_model(ops in ops(), base in prop_oneof![Just(0u64), Just(u64::MAX - 1_000_000), any::<u64>()]) {
            let mut w = ReplayWindow::new();
            let mut seen = HashSet::new();
            let mut highest: Option<u64> = None;
            let mut cur = base;
            for (kind, delta) in ops {
                let c = match kind {
                    0 => cur.saturating_add(delta % 70),
                    1 => cur.saturating_sub(delta),
                    2 => cur.saturating_add(delta),
                    _ => cur,
                };
                cur = cur.max(c);
                let expected = match highest {
                    Some(h) if c <= h && h - c >= WINDOW => Err(ReplayError::TooOld),
                    _ if seen.contains(&c) => Err(ReplayError::Duplicate),
                    _ => Ok(()),
                };
                prop_assert_eq!(w.check(c), expected, "counter {}", c);
                if expected.is_ok() {
                    w.commit(c);
                    seen.insert(c);
                    highest = Some(highest.map_or(c, |h| h.max(c)));
                }
                prop_assert_eq!(w.highest(), highest);
            }
        }
    }
}
