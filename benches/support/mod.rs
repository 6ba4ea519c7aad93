//! Shared by the benches that build JSON bodies (`#[path]`-included: benches are separate
//! crates).

/// `{"data":[r0,r1,...]` with records `record(s, i)` appends until the text is about `size`
/// bytes, then `tail` (which closes the array and the object).
pub fn json_records(size: usize, tail: &str, mut record: impl FnMut(&mut String, usize)) -> String {
    let mut s = String::from("{\"data\":[");
    let mut i = 0;
    while s.len() < size {
        if i > 0 {
            s.push(',');
        }
        record(&mut s, i);
        i += 1;
    }
    s.push_str(tail);
    s
}
