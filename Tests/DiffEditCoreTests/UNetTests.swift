import Foundation
import XCTest
@testable import DiffEditCore

/// UNet2DCondition against diffusers' UNet2DConditionModel on the fixture pipelines: per-block
/// outputs and the final output.
final class UNetTests: XCTestCase {
    /// Max abs error allowed, relative to the largest magnitude of the reference tensor.
    static let tolerance: Float = 1e-4

    func check(folder: String, refFile: String) throws {
        let model = try ModelFolder(root: folder)
        let unet = try UNet2DCondition(folder: model)
        let recs = Dictionary(try TensorStream.readAll(path: refFile).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let x = recs["sample"]!.tensor(), enc = recs["encoder_hidden_states"]!.tensor()
        let t = recs["timestep"]!.floats()[0]
        var seen: [String: Tensor] = [:]
        let out = try unet.forward(sample: x, timesteps: [t], encoderHiddenStates: enc) { name, value in seen[name] = value }
        var names = seen.keys.sorted()
        names.append("out")
        seen["out"] = out
        for name in names {
            guard let want = recs[name] else { continue }
            let got = seen[name]!
            XCTAssertEqual(got.shape, want.shape, "\(folder) \(name) shape")
            let w = want.floats()
            let scale = max(w.reduce(0) { max($0, abs($1)) }, 1e-6)
            let err = zip(got.data, w).reduce(0) { max($0, abs($1.0 - $1.1)) }
            print("\(folder) \(name): max abs error \(err), scale \(scale), relative \(err / scale)")
            XCTAssertLessThanOrEqual(err / scale, Self.tolerance, "\(folder) \(name)")
        }
    }

    func testScratch() throws {
        for name in ["sd1", "sd1_odd", "sd2"] {
            try check(folder: "/tmp/unetref/\(name)", refFile: "/tmp/unetref/\(name)/unet_ref.tensor")
        }
    }
}
