//! BPF_MAP_LOOKUP_BATCH and BPF_MAP_UPDATE_BATCH (Linux 5.6+), which aya 0.14 does not wrap:
//! a whole table in a few system calls instead of one or two per entry.

/// `union bpf_attr` as the batch commands read it.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of a hash or array map, with BPF_MAP_LOOKUP_BATCH: a few system calls for the
/// whole table. Entries that change meanwhile may be seen in either state, as with any walk.
pub(super) fn lookup_batch<K: Copy + Default, V: Copy + Default>(
    fd: std::os::fd::RawFd,
) -> std::io::Result<Vec<(K, V)>> {
    // At least a hash bucket's worth, or the kernel answers ENOSPC.
    const CHUNK: usize = 8192;
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let mut keys = vec![K::default(); CHUNK];
    let mut values = vec![V::default(); CHUNK];
    let mut out = Vec::new();
    // The batch token is a u32: a hash map's bucket index, an array's next index.
    let (mut token, mut next) = (0u32, 0u32);
    for round in 0.. {
        let mut attr = BatchAttr {
            in_batch: if round == 0 {
                0
            } else {
                &raw const token as u64
            },
            out_batch: &raw mut next as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: bpf(2) writes at most `count` keys and values into buffers of that many
        // elements of the map's key and value types, and one token into `next`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let error = (rc != 0).then(std::io::Error::last_os_error);
        let n = (attr.count as usize).min(CHUNK);
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match error {
            None if n == 0 => break,
            None => token = next,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Some(e) => return Err(e),
        }
        if round > (1 << 24) {
            return Err(std::io::Error::other("the batch walk does not end"));
        }
    }
    Ok(out)
}

/// Writes `values` to array entries `first..` with one BPF_MAP_UPDATE_BATCH (Linux 5.6+).
pub(super) fn update_batch(
    fd: std::os::fd::RawFd,
    first: u32,
    values: &[u32],
) -> std::io::Result<()> {
    let keys: Vec<u32> = (first..).take(values.len()).collect();
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: values.len() as u32,
        map_fd: fd as u32,
        elem_flags: 0,
        flags: 0,
    };
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    // SAFETY: bpf(2) reads `count` keys and values from buffers that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &raw mut attr,
            size_of::<BatchAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if attr.count as usize != values.len() {
        return Err(std::io::Error::other("partial batch update"));
    }
    Ok(())
}
