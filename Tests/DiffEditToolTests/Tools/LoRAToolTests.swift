import Foundation
import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// --lora through the built tools: the whole DiffEdit pipeline with two adapters (a PEFT one at 0.7
/// and a kohya one at −0.4) against diffusers' pipeline with the same adapters set
/// (Tests/Fixtures/lora/K/diffedit.tensor), and the refusals that keep the stages' adapters equal.
final class LoRAToolTests: XCTestCase {
    static func arguments(_ c: DiffEditToolTests.Case) throws -> String {
        let json = try XCTUnwrap(c.refs["diffedit.mask"]?.metadata["lora_json"])
        let args = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String])
        return args.map { "--lora '\(Fixtures.path("lora/" + $0))'" }.joined(separator: " ")
    }

    func testPipelineOfToolsWithLoRAsMatchesDiffusers() throws {
        for key in ["sd1", "sd2"] {
            let c = try DiffEditToolTests.fixtureCase(key, ref: "lora/\(key)/diffedit.tensor")
            try DiffEditToolTests.checkToolPipeline(c, model: c.model, label: "\(key) with LoRAs", dir: try temporaryDirectory(self),
                                                    adapters: try Self.arguments(c))
        }
    }

    func testStagesRefuseOtherAdapters() throws {
        let dir = try temporaryDirectory(self)
        let m = "--model '\(Fixtures.path("sd1"))'"
        let peft = "--lora '\(Fixtures.path("lora/sd1/style-peft.safetensors"))'"
        let cat = Fixtures.path("sd1/cat.ppm")
        _ = try DiffEditToolTests.run("""
            tokenize \(m) 'a cat' | encode-text \(m) \(peft) > src.tensor
            tokenize \(m) 'a dog' | encode-text \(m) \(peft) > tgt.tensor
            vae-encode \(m) < '\(cat)' > post.tensor
            invert \(m) \(peft) --prompt src.tensor --steps 3 < post.tensor > inv.tensor
            noise-diff-mask \(m) \(peft) --source src.tensor --target tgt.tensor --steps 3 < post.tensor > mask.tensor
            """, in: dir)
        let inv = try DiffEditToolTests.read(dir.appendingPathComponent("inv.tensor"), "inverted")
        XCTAssertTrue(try XCTUnwrap(inv.metadata["lora"]).hasSuffix("style-peft.safetensors:1"))
        XCTAssertNotEqual(inv.metadata["lora.fingerprint"], "none")
        func refused(_ script: String, _ phrase: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let r = try sh("cd '\(dir.path)' && " + script)
            XCTAssertNotEqual(r.status, 0, script, file: file, line: line)
            XCTAssertTrue(r.err.contains(phrase), r.err, file: file, line: line)
            XCTAssertEqual(r.err.split(separator: "\n").count, 1, "one line: \(r.err)", file: file, line: line)
        }
        // Embeddings made with the LoRA, a stage without it (and the other way round, and at another scale).
        try refused("invert \(m) --prompt src.tensor --steps 3 < post.tensor > x.tensor", "this run has none — give every stage the same --lora")
        try refused("denoise \(m) --mask mask.tensor --prompt tgt.tensor < inv.tensor > x.tensor", "was made with --lora")
        try refused("denoise \(m) \(peft):0.5 --mask mask.tensor --prompt tgt.tensor < inv.tensor > x.tensor", "was made with --lora")
        try refused("tokenize \(m) 'a cat' | encode-text \(m) > plain.tensor && invert \(m) \(peft) --prompt plain.tensor --steps 3 < post.tensor > x.tensor",
                    "was made with --lora none")
        // The same adapters are accepted (and the VAE's posterior, which records none, is too).
        _ = try DiffEditToolTests.run("denoise \(m) \(peft) --mask mask.tensor --prompt tgt.tensor < inv.tensor > edit.tensor", in: dir)
        // Files that are no LoRA for this model.
        try refused("tokenize \(m) 'a cat' | encode-text \(m) --lora '\(Fixtures.path("lora/sd2/style-peft.safetensors"))' > x.tensor",
                    "the LoRA is for another model")
        try refused("tokenize \(m) 'a cat' | encode-text \(m) --lora '\(Fixtures.path("sd1/unet/diffusion_pytorch_model.safetensors"))' > x.tensor",
                    "holds no LoRA tensors")
        try refused("tokenize \(m) 'a cat' | encode-text \(m) \(peft) --lora-mode fused > x.tensor", "--lora-mode 'fused'")
    }
}
