import Foundation
import XCTest
import DiffEditTestSupport

/// The comparison verdict every parity test relies on (Support/Closeness.swift): it must be able
/// to fail, NaN and infinities included.
final class ClosenessTests: XCTestCase {
    let finite: [Float] = [0.5, -1, 2, 3]

    func testEqualAndWithinToleranceAreOK() {
        let same = closeness(finite, finite, atol: 0)
        XCTAssertTrue(same.ok)
        XCTAssertEqual(same.maxAbsError, 0)
        XCTAssertEqual(same.failures, 0)
        let near = closeness([0.5, -1, 2.00005, 3] as [Float], finite, atol: 1e-4)
        XCTAssertTrue(near.ok)
        XCTAssertEqual(near.index, 2)
        XCTAssertEqual(near.maxAbsError, 5e-5, accuracy: 1e-6)
    }

    func testOverToleranceFailsAndNamesTheWorstElement() {
        let c = closeness([0.5, -1.01, 2.5, 3] as [Float], finite, atol: 0.1)
        XCTAssertFalse(c.ok)
        XCTAssertEqual(c.failures, 1)
        XCTAssertEqual(c.index, 2)
        XCTAssertEqual(c.actual, 2.5)
        XCTAssertEqual(c.expected, 2)
        XCTAssertEqual(c.error, 0.5)
        XCTAssertTrue(c.description.contains("[2]") && c.description.contains("got 2.5") && c.description.contains("want 2.0"), c.description)
    }

    /// The bug this helper replaces: `reduce(0) { max($0, abs(a − b)) }` returns 0 for an all-NaN
    /// output, and `if !(d <= worst) { worst = d }` lets a later finite error overwrite a NaN worst.
    func testNaNInActualFailsWhateverTheTolerance() {
        let allNaN = [Float](repeating: .nan, count: 4)
        XCTAssertEqual(zip(allNaN, finite).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }, 0, "the NaN-blind pattern")
        let c = closeness(allNaN, finite, atol: 1e30)
        XCTAssertFalse(c.ok)
        XCTAssertEqual(c.nonFinite, 4)
        XCTAssertTrue(c.maxAbsError.isNaN)
        XCTAssertTrue(c.actual.isNaN)
        XCTAssertEqual(c.index, 0)

        // NaN first, then a finite error: the NaN stays the worst element.
        let d = closeness([.nan, -1, 2.5, 3] as [Float], finite, atol: 1)
        XCTAssertFalse(d.ok)
        XCTAssertEqual(d.index, 0)
        XCTAssertTrue(d.error.isNaN)
        XCTAssertEqual(d.failures, 1)
        // A single NaN among many good elements.
        var big = [Float](repeating: 1, count: 10_000)
        let want = big
        big[7777] = .nan
        let e = closeness(big, want, atol: 1e-3)
        XCTAssertFalse(e.ok)
        XCTAssertEqual(e.index, 7777)
        XCTAssertTrue(e.description.contains("nan"), e.description)
    }

    func testInfinityWhereTheReferenceIsFiniteFails() {
        let c = closeness([0.5, .infinity, 2, 3] as [Float], finite, atol: 1e30)
        XCTAssertFalse(c.ok)
        XCTAssertEqual(c.index, 1)
        XCTAssertEqual(c.maxAbsError, .infinity)
        XCTAssertFalse(closeness([-Float.infinity], [Float.infinity], atol: 1e30).ok)
        XCTAssertFalse(closeness([Float(1)], [Float.infinity], atol: 1e30).ok)
        // The same non-finite value as the reference matches.
        XCTAssertTrue(closeness([Float.infinity, .nan], [Float.infinity, .nan], atol: 0).ok)
        XCTAssertFalse(closeness([Float(0)], [Float.nan], atol: 1e30).ok)
    }

    func testCountMismatchAndEmptyFail() {
        let c = closeness([Float](finite.prefix(3)), finite, atol: 1e30)
        XCTAssertFalse(c.ok)
        XCTAssertEqual(c.index, -1)
        XCTAssertTrue(c.description.contains("element count 3, expected 4"), c.description)
        XCTAssertFalse(closeness([Float](), [Float](), atol: 1).ok, "comparing nothing proves nothing")
    }

    func testRelativeToleranceAndMixedPrecision() {
        let want: [Double] = [1e6, 1e-6]
        XCTAssertTrue(closeness([Float(1e6 + 0.05), Float(1e-6)], want, atol: 0, rtol: 1e-7).ok)
        XCTAssertFalse(closeness([Float(1e6 + 0.5), Float(1e-6)], want, atol: 0, rtol: 1e-7).ok)
        // rtol scales per element: the small one must be close in its own terms.
        XCTAssertFalse(closeness([Float(1e6), Float(2e-6)], want, atol: 0, rtol: 1e-7).ok)
    }

    func testNaNAwareHelpers() {
        XCTAssertTrue(nanAwareMax(0, .nan).isNaN)
        XCTAssertTrue(nanAwareMax(.nan, 1).isNaN)
        XCTAssertEqual(nanAwareMax(2, 1), 2)
        XCTAssertEqual(maxMagnitude([1, -3, 2]), 3)
        XCTAssertTrue(maxMagnitude([1, .nan, 2]).isNaN)
    }
}
