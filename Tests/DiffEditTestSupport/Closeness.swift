import Foundation
import XCTest
@testable import DiffEditCore

/// The one elementwise comparison every parity test uses: a pure verdict (`closeness`) and the
/// assertion built on it (`assertClose`).
///
/// NaN-aware by construction. The obvious `reduce(0) { max($0, abs($1.0 - $1.1)) }` ignores NaN
/// (Swift's `max` keeps its first argument when the comparison with NaN is false), so an all-NaN
/// output would pass it. Here every element is judged on its own:
/// - a NaN or ±Inf where the reference is finite fails, whatever the tolerance;
/// - a NaN in the reference matches only a NaN, an infinite reference only the same infinity;
/// - a finite pair passes when |actual − expected| ≤ atol + rtol·|expected|.
/// Differing element counts fail, and so does comparing nothing (count 0): a parity check over no
/// elements proves nothing.
public struct Closeness: CustomStringConvertible {
    /// Every element within its allowance, counts equal and non-zero.
    public var ok: Bool
    public var actualCount: Int
    public var expectedCount: Int
    /// The element that misses its allowance by the most (for a passing comparison: the one
    /// closest to missing it); -1 when there is no element to name (empty or count mismatch).
    public var index: Int
    public var actual: Double
    public var expected: Double
    /// |actual − expected| at `index` (NaN or +Inf for a non-finite mismatch).
    public var error: Double
    /// The largest |actual − expected| over all elements: NaN if any element is NaN against a
    /// non-NaN reference (or the reverse), +Inf if any is infinite against a finite reference.
    public var maxAbsError: Double
    /// Elements that are NaN/Inf where the reference is not the same value.
    public var nonFinite: Int
    /// Elements outside their allowance (non-finite mismatches included).
    public var failures: Int
    public var atol: Double
    public var rtol: Double

    public var description: String {
        if actualCount != expectedCount { return "element count \(actualCount), expected \(expectedCount)" }
        if expectedCount == 0 { return "no elements to compare" }
        var s = "max abs error \(maxAbsError); worst at [\(index)]: got \(actual), want \(expected) (|Δ| \(error))"
        s += ", allowed \(atol)" + (rtol > 0 ? " + \(rtol)·|want|" : "")
        if failures > 0 { s += "; \(failures) of \(expectedCount) elements outside" }
        if nonFinite > 0 { s += " (\(nonFinite) non-finite where the reference is not)" }
        return s
    }
}

/// Compares `actual` with `expected` elementwise (see `Closeness`). Computed in Double, so
/// Float and Double arrays may be mixed and a difference of two large Floats cannot overflow.
public func closeness<A: BinaryFloatingPoint, E: BinaryFloatingPoint>(_ actual: [A], _ expected: [E],
                                                               atol: Double, rtol: Double = 0) -> Closeness {
    var r = Closeness(ok: false, actualCount: actual.count, expectedCount: expected.count, index: -1,
                      actual: .nan, expected: .nan, error: .nan, maxAbsError: .nan, nonFinite: 0, failures: 0,
                      atol: atol, rtol: rtol)
    guard actual.count == expected.count, !expected.isEmpty else { return r }
    // Rank of a miss: NaN above ±Inf above the largest finite excess over the allowance.
    func rank(_ d: Double, _ allowed: Double) -> (Int, Double) { d.isNaN ? (2, 0) : d.isInfinite ? (1, 0) : (0, d - allowed) }
    var worstRank = (-1, 0.0)
    var maxAbs = 0.0
    for i in 0..<expected.count {
        let a = Double(actual[i]), e = Double(expected[i])
        let d: Double
        if e.isNaN || a.isNaN {
            d = (e.isNaN && a.isNaN) ? 0 : .nan
        } else if e.isInfinite || a.isInfinite {
            d = a == e ? 0 : .infinity
        } else {
            d = abs(a - e)
        }
        let allowed = atol + rtol * (e.isFinite ? abs(e) : 0)
        if d.isNaN || d.isInfinite { r.nonFinite += 1 }
        if !(d <= allowed) { r.failures += 1 }
        // NaN-aware maximum: once NaN, stays NaN.
        if d.isNaN || maxAbs.isNaN { maxAbs = .nan } else if d > maxAbs { maxAbs = d }
        let k = rank(d, allowed)
        if k > worstRank {
            worstRank = k
            r.index = i
            r.actual = a
            r.expected = e
            r.error = d
        }
    }
    r.maxAbsError = maxAbs
    r.ok = r.failures == 0
    return r
}

/// Asserts `actual` ≈ `expected` (see `closeness`); on failure the message names the worst element,
/// its value and the reference's. Returns the verdict so a test can report the measured error.
@discardableResult
public func assertClose<A: BinaryFloatingPoint, E: BinaryFloatingPoint>(_ actual: [A], _ expected: [E], atol: Double, rtol: Double = 0,
                                                                 _ label: String, file: StaticString = #filePath, line: UInt = #line) -> Closeness {
    let c = closeness(actual, expected, atol: atol, rtol: rtol)
    if !c.ok { XCTFail("\(label): \(c)", file: file, line: line) }
    ParityLog.record(label, c)
    return c
}

/// Shape and elements of a tensor against a fixture record.
@discardableResult
public func assertClose(_ actual: Tensor, _ expected: TensorRecord, atol: Double, rtol: Double = 0, _ label: String,
                 file: StaticString = #filePath, line: UInt = #line) -> Closeness {
    XCTAssertEqual(actual.shape, expected.shape, "\(label): shape", file: file, line: line)
    return assertClose(actual.data, expected.floats(), atol: atol, rtol: rtol, label, file: file, line: line)
}

/// The largest |x| of a reference, NaN-aware (NaN if any element is NaN); for tolerances that scale
/// with the reference's magnitude.
public func maxMagnitude(_ xs: [Float]) -> Float {
    var m: Float = 0
    for x in xs {
        if x.isNaN { return .nan }
        if abs(x) > m { m = abs(x) }
    }
    return m
}

/// With DIFFEDIT_PRINT_PARITY=1 every assertClose prints its label and measured worst error, so
/// the per-stage errors can be read off a test log (`swift test` output).
public enum ParityLog {
    public static let enabled = ProcessInfo.processInfo.environment["DIFFEDIT_PRINT_PARITY"] == "1"
    public static func record(_ label: String, _ c: Closeness) {
        guard enabled else { return }
        print("parity: \(label): max abs error \(c.maxAbsError) (atol \(c.atol)\(c.rtol > 0 ? ", rtol \(c.rtol)" : ""))\(c.ok ? "" : " FAILED")")
    }
}

/// max(a, b) that propagates NaN (Swift's max(0, .nan) is 0), for accumulating worst errors.
public func nanAwareMax(_ a: Double, _ b: Double) -> Double { a.isNaN || b.isNaN ? .nan : Swift.max(a, b) }
