#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The process's limit on open files (`RLIMIT_NOFILE`), which bounds how many connections it can hold: every
/// socket is a file descriptor.
public enum OpenFileLimit {
    /// The process's open-file limit, after raising its soft limit to its hard limit (as a server should: the
    /// soft limit is often 1,024 while the hard one allows far more). Returns the limit now and what it was.
    public static func raise() -> (limit: Int, before: Int) {
        var limits = rlimit()
        guard getrlimit(resourceNOFILE, &limits) == 0 else { return (1024, 1024) }
        let before = clamped(limits.rlim_cur)
        // An unlimited hard limit is not one the kernel lets a soft limit take (fs.nr_open bounds it).
        let target = limits.rlim_max == rlim_t.max ? rlim_t(1 << 20) : limits.rlim_max
        if limits.rlim_cur < target {
            var raised = limits
            raised.rlim_cur = target
            if setrlimit(resourceNOFILE, &raised) == 0 { return (clamped(raised.rlim_cur), before) }
        }
        return (before, before)
    }

    private static func clamped(_ value: rlim_t) -> Int { value >= rlim_t(Int32.max) ? Int(Int32.max) : Int(value) }

    #if canImport(Glibc)
    private static let resourceNOFILE = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    #else
    private static let resourceNOFILE = RLIMIT_NOFILE
    #endif
}
