import DiffEditCore

/// What every DiffEdit stage tool (noise-diff-mask, invert, denoise) does around its core call,
/// in the order it must happen: standard output checked first (a terminal is refused before any
/// work), the input stream read and checked for non-finite values, the model resolved, the
/// model's recommended settings (diffedit_defaults.json) at hand, embeddings loaded and
/// broadcast to the batch, the UNet loaded, progress reported, provenance recorded, records
/// written. A stage tool's `main` keeps only its own options and its call into the core.
public final class StageRun {
    public let tool: String
    public let common: StageOptions
    public let output: TensorStreamWriter
    /// Every record of the input stream (finite unless --allow-nonfinite).
    public let records: [TensorRecord]
    /// The input as messages name it ("stdin", a path).
    public let inputLabel: String
    public let folder: ModelFolder
    public let settings: ModelSettings

    /// `input`: the tool's positional input (nil or "-": stdin); `expecting` says what it should
    /// be, for the message when it is empty.
    public init(_ tool: String, _ common: StageOptions, input: String?, expecting: String) throws {
        self.tool = tool
        self.common = common
        try common.precisionOption.apply(tool: tool, quiet: common.quiet)
        output = try CLI.tensorOutput(force: common.force)
        let reader = try CLI.tensorInput(input)
        records = try reader.readAllNonEmpty(expecting: expecting)
        inputLabel = reader.label
        for r in records { try r.requireFinite(from: reader.label, allow: common.allowNonfinite) }
        var folder = try ModelFolder.resolve(common.model)
        folder.lora = try common.loraOption.load()
        self.folder = folder
        settings = try ModelSettings(folder: folder, stage: ModelDefaults.Stage(rawValue: tool))
    }

    /// Refuses a record of the input (`what`: "the posterior") made with another model.
    public func checkModel(_ record: TensorRecord, _ what: String) throws {
        try DiffEditIO.checkModel(record, folder, option: inputLabel == "stdin" ? "\(what) on stdin" : "\(what) \(inputLabel)")
    }

    /// Embeddings given to `option` (encode-text's record), one per image: a single prompt is
    /// broadcast to `images`.
    public func embeddings(_ path: String, option: String, images n: Int) throws -> Tensor {
        let e = try DiffEditIO.embeddings(path, folder: folder, option: option, allowNonfinite: common.allowNonfinite)
        return try DiffEditSupport.broadcastPrompts(e, to: n, option: option)
    }

    /// Negative embeddings: the file given to `option`, else the model's negative prompt (its
    /// defaults file's, else ""), one per image.
    public func negative(_ path: String?, option: String, images n: Int) throws -> Tensor {
        let e = try settings.negative(path, option: option, allowNonfinite: common.allowNonfinite)
        return try DiffEditSupport.broadcastPrompts(e, to: n, option: option)
    }

    /// The option's value if given, else the model's defaults file's (the section named for this
    /// tool, then the top level), else `builtIn`.
    public func pick<T>(_ given: T?, _ key: KeyPath<ModelDefaults, T?>, _ name: String, builtIn: T) -> T {
        settings.pick(given, key, name, builtIn: builtIn)
    }

    /// The UNet, after the --verbose note on where the settings came from.
    public func loadUNet() throws -> UNet2DCondition {
        settings.note(tool, common)
        return try common.loadUNet(folder, tool: tool)
    }

    /// Progress on stderr (a terminal, or --progress; never with --quiet).
    public private(set) lazy var progress = ProgressReporter(tool: tool, quiet: common.quiet, force: common.progress)

    /// A note on stderr unless --quiet.
    public func note(_ message: String) {
        if !common.quiet { CLI.note(tool, message) }
    }

    /// Provenance (the model and its fingerprint), the values taken from the model's defaults
    /// file, and the image size of `source` carried over, under `extra`.
    public func metadata(_ extra: [String: String], carryingImageSizeOf source: TensorRecord? = nil) -> [String: String] {
        var meta = DiffEditIO.provenance(folder)
        settings.record(into: &meta)
        meta.merge(common.precisionOption.metadata) { $1 }
        if let source {
            for k in [MetadataKey.imageWidth, MetadataKey.imageHeight] { if let v = source.metadata[k] { meta[k] = v } }
        }
        meta.merge(extra) { $1 }
        return meta
    }

    /// Writes the records to standard output and flushes it.
    public func write(_ records: TensorRecord...) throws {
        for r in records { try output.write(r) }
        try output.flush()
    }
}
