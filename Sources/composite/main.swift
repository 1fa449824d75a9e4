import ArgumentParser
import DiffEditCore
import DiffEditCLI

/// composite's numeric options.
private enum Numbers {
    static let feather = NumberOption<Int>("--feather", .from(0, to: 4096))
    static let dilate = NumberOption<Int>("--dilate", .from(0, to: 4096))
    static let threshold = NumberOption<Float>("--threshold", .from(0, below: 1))
    static let refine = NumberOption<Int>("--refine", .from(0, to: 4096))
    static let refineEps = NumberOption<Float>("--refine-eps", .above(0, atMost: 1))
}

extension PhotoComposite.RefineGuide: ExpressibleByArgument {}

/// composite: an edit made at the model's size put back into the full-size photo through its
/// mask, everything the mask does not reach left bit for bit. See composite(1).
@main
struct CompositeTool: DiffEditTool {
    static let configuration = CommandConfiguration(
        commandName: "composite",
        abstract: "Blend an edit made at the model's size into the full-size original through its mask.",
        discussion: "Reads the decoded edit (PPM/PAM) on stdin, writes the original with the edit blended in, in the original's format. See composite(1).",
        version: CLI.version)

    @Option(name: .long, help: "The original photo, any size: PPM, PGM, PBM or PAM (grey or RGB, with or without alpha), 8 or 16 bits.")
    var original: String
    @Option(name: .long, help: "The edit's mask: noise-diff-mask's mask or soft map (records mask, mask.soft), or a grey image (white = edit).")
    var mask: String
    @Option(Numbers.feather, "Fade the edit out over this many pixels outside the mask", defaultText: "half a mask cell: the region's width over the mask's, halved, rounded")
    var feather: Int?
    @Option(Numbers.dilate, "Grow the mask by this many pixels (a disc) before feathering")
    var dilate = 0
    @Option(Numbers.threshold, "A pixel is in the mask where the mask, resampled to pixels, is above this")
    var threshold: Float = 0.5
    @Option(Numbers.refine, "Before the threshold, bring the resampled mask to the picture's edges by a guided filter of this radius in pixels (0: off)",
            defaultText: "four mask cells for a tensor mask, 0 for a mask image")
    var refine: Int?
    @Option(Numbers.refineEps, "The guided filter's ε, on samples scaled to 0...1: larger follows only stronger edges")
    var refineEps: Float = 0.01
    @Option(name: .long, help: "What guides the refinement: original (its edges) or both (the original's and the edit's, default).")
    var refineGuide: PhotoComposite.RefineGuide = .both
    @Option(name: .long, help: "X,Y,W,H: the edit and the mask depict this rectangle of the original, in pixels (tensor bbox makes one).")
    var region: String?
    @Option(name: .long, help: "Also write the pixel mask (after threshold and dilation, before feathering) to this file, a PGM of the original's size.")
    var maskOutput: String?
    @Flag(name: .shortAndLong, help: "Say on stderr the region, the feather and how many pixels the mask covers.")
    var verbose = false
    @Flag(name: [.customShort("f"), .long], help: "Write binary data even to a terminal.")
    var force = false
    @Argument(help: "The edit at the model's size, PPM or PAM (default or '-': stdin).")
    var edited: String?

    func run() throws {
        try CLI.run(Self.toolName) {
            let editPath = edited ?? "-"
            let maskFile = try maskOutput.map { try SideOutput(path: $0, option: "--mask-output", inputs: [editPath, original, mask]) }
            var options = PhotoComposite.Options()
            options.feather = feather
            options.dilate = dilate
            options.threshold = threshold
            options.refine = refine
            options.refineEpsilon = refineEps
            options.refineGuide = refineGuide
            options.region = try region.map { try PixelBox.parse($0, option: "--region") }
            let out = try CLI.binaryOutput(force: force)
            var job = try PhotoComposite.Inputs.read(original: original, mask: mask, edited: editPath, region: options.region)
            let r = try PhotoComposite(options: options).run(blendingInto: &job.original, edit: job.edit, mask: job.mask, maskLabel: "--mask \(mask)")
            if verbose {
                let covered = r.pixelMask.inside.reduce(0) { $0 + Int($1) }
                CLI.note(Self.toolName, "region \(r.region) of \(job.original.width)x\(job.original.height); mask \(job.mask.map.width)x\(job.mask.map.height) cells covers \(covered) pixels after refinement (radius \(r.refine) px) and dilation \(dilate); feather \(r.feather) px")
            }
            try job.original.write(to: out)
            try out.flush()
            try maskFile?.write { w in
                try PhotoComposite.maskImage(r.pixelMask, region: r.region, width: job.original.width, height: job.original.height).write(to: w)
                try w.flush()
            }
        }
    }
}
