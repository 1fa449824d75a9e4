import Foundation

/// Optional wall-clock accounting of kernel time by category (unet-bench --profile). Off by
/// default; when off, `measure` costs one branch.
public enum Profile {
    nonisolated(unsafe) public static var enabled = false
    nonisolated(unsafe) static var totals: [String: (seconds: Double, calls: Int)] = [:]
    static let lock = NSLock()

    @inline(__always)
    public static func measure<T>(_ name: String, _ body: () throws -> T) rethrows -> T {
        guard enabled else { return try body() }
        let t0 = DispatchTime.now().uptimeNanoseconds
        let r = try body()
        let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        lock.lock()
        let old = totals[name] ?? (0, 0)
        totals[name] = (old.seconds + dt, old.calls + 1)
        lock.unlock()
        return r
    }

    /// Categories by time, largest first, and clears them.
    public static func report() -> [(name: String, seconds: Double, calls: Int)] {
        lock.lock(); defer { lock.unlock() }
        let r = totals.map { ($0.key, $0.value.seconds, $0.value.calls) }.sorted { $0.1 > $1.1 }
        totals = [:]
        return r
    }
}
