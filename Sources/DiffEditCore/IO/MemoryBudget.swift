#if canImport(Glibc)
import Glibc
#endif

/// Memory estimates checked before a large allocation, so that an input too big for the machine
/// is refused with the estimate and a way round it instead of ending in the OOM killer.
public enum MemoryBudget {
    /// Physical memory of the machine (sysconf), or nil when unknown.
    public static var physicalBytes: Int? {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), size = sysconf(Int32(_SC_PAGESIZE))
        guard pages > 0, size > 0 else { return nil }
        let (b, o) = pages.multipliedReportingOverflow(by: size)
        return o ? Int.max : b
    }

    /// Overrides the machine's memory (for tests, or to leave room for other work):
    /// $DIFFEDIT_MEMORY_LIMIT in bytes, a positive integer; set but empty is unset. Any other
    /// value is refused rather than ignored.
    public static var limitBytes: Int? {
        get throws {
            guard let s = getenv("DIFFEDIT_MEMORY_LIMIT").map({ String(cString: $0) }), !s.isEmpty else { return physicalBytes }
            guard s.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let v = Int(s), v > 0 else {
                throw ToolError("$DIFFEDIT_MEMORY_LIMIT '\(s.prefix(40))' is not a number of bytes — set it to a positive integer such as 8000000000, or unset it")
            }
            return v
        }
    }

    /// "3.2 GB", "512 MB".
    public static func describe(_ bytes: Double) -> String {
        let units = ["bytes", "KB", "MB", "GB", "TB", "PB", "EB"]
        var v = bytes, u = 0
        while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
        return u == 0 ? "\(Int(v)) bytes" : String(format: "%.1f %@", v, units[u])
    }

    /// Peak memory of running the VAE (encoder or decoder) on an image of `width` × `height`:
    /// the widest activations are block_out_channels[0] channels at full resolution; a 3×3
    /// convolution holds input, output and an im2col buffer of 9 × its input, plus the norm's
    /// temporary. Computed in Double so hostile sizes cannot overflow.
    /// `widestChannels` is the VAE's block_out_channels[0].
    public static func vaeBytes(width: Int, height: Int, batch: Int = 1, widestChannels: Int) -> Double {
        let c0 = Double(widestChannels)
        let pixels = Double(width) * Double(height)
        return 4 * (13 * c0 * pixels + 8 * pixels * Double(batch))
    }

    /// Peak of the workspace of one UNet forward pass (activations and kernel scratch, the memory
    /// `unet-bench` reports as "workspace … held") for `batch` latents of `latentHeight` ×
    /// `latentWidth`, in bytes. Coarse and on the high side, from measurements (debug build,
    /// 2 threads; "load" is Σ over levels l of block_out_channels[l] × the latent pixels at l,
    /// times the batch):
    ///
    ///     model (channels)           batch × latent   workspace   per unit of load
    ///     SD 1.5 (320/640/1280/1280)  2 × 32²           343 MiB    76 floats
    ///                                 8 × 32²          1095 MiB    60
    ///                                 2 × 64²          1000 MiB    55
    ///     demo (64/128/128)           2 × 64²           163 MiB    50
    ///                                 2 × 128²          405 MiB    31
    ///     fixture sd1 (16/32/32)      2 × 64²            50 MiB    62
    ///                                 2 × 128²          147 MiB    45
    ///
    /// The estimate is 64 floats per unit of load (the skip connections of every level, the
    /// transformer's feed-forward at 8 × channels, Q/K/V, the norms' outputs, the buffers the
    /// pool keeps per size) plus the kernels' scratch, each distinct size of which the pool keeps:
    /// the small-image unfold and Winograd's tiles (each the lesser of its budget,
    /// Conv2D.smallColumnBudget / winogradBudget, and what the batch needs), the transformed
    /// weights of the widest 3×3 convolution (16 × 2C × C), the im2col band, and per thread the
    /// attention scores and a widened weight block. SD 1.5, 2 × 64²: 1.67 GB estimated, 1.05 GB
    /// measured; 2 × 32²: 0.76 GB for 0.36 GB.
    public static func unetBytes(config: UNetConfig, batch: Int, latentHeight h: Int, latentWidth w: Int,
                                 threads: Int) -> Double {
        var load = 0.0
        for (level, channels) in config.blockOutChannels.enumerated() {
            let shift = min(level, 62)
            let ph = (Double(h) / Double(1 << shift)).rounded(.up), pw = (Double(w) / Double(1 << shift)).rounded(.up)
            load += Double(channels) * ph * pw
        }
        // A convolution's input has at most 3 × the widest channels (an up block's resnet takes
        // its input and a skip connection).
        let widest = Double(config.blockOutChannels.max() ?? 0), b = Double(batch)
        let pixels = Double(h) * Double(w)
        let policy = KernelPolicy()  // the kernels' budgets, as the tools run them
        let unfold = min(Double(policy.smallColumnBudget), 9 * 3 * widest * b * min(pixels, Double(policy.smallImagePixels)))
        let tiles = min(Double(policy.winogradBudget), 16 * 4 * widest * b * (pixels / 4 + Double(h + w)))
        let perThread = Double(policy.scoreBudget + policy.weightBlockFloats)
        let scratch: Double = unfold + tiles + 32 * widest * widest + Double(policy.columnBudget) + Double(max(threads, 1)) * perThread
        return 4 * (64 * b * load + scratch)
    }

    /// Bytes of the weight file a component is read from (mapped; its pages are resident while
    /// the network runs, shared through the page cache by every process on the same model). For a
    /// single-file checkpoint, the whole file: an upper bound. 0 when the file cannot be found.
    public static func weightFileBytes(_ folder: ModelFolder, _ component: String) -> Double {
        func size(_ path: String) -> Double? {
            var st = stat()
            guard stat(path, &st) == 0 else { return nil }
            return Double(st.st_size)
        }
        if let single = folder.singleFile { return size(single.path) ?? 0 }
        for name in ModelFolder.weightFileNames {
            if let s = size(folder.path(component, name)) { return s }
        }
        return 0
    }

    /// Throws when `bytes` is more than the machine has (or than $DIFFEDIT_MEMORY_LIMIT).
    /// Under an address-space limit (`ulimit -v`) the headroom left below it is a limit too:
    /// past it an allocation would fail mid-run, not here with the estimate.
    public static func require(_ bytes: Double, for what: String, remedy: String) throws {
        if let headroom = AddressSpace.headroomBytes, let limit = AddressSpace.limitBytes, bytes > Double(headroom) {
            throw ToolError("\(what) needs about \(describe(bytes)) of memory, more than the \(describe(Double(max(headroom, 0)))) left under the address-space limit (ulimit -v \(limit / 1024)) — raise the limit, or \(remedy)")
        }
        guard let limit = try limitBytes, bytes > Double(limit) else { return }
        let set = getenv("DIFFEDIT_MEMORY_LIMIT").map { String(cString: $0) }.map { !$0.isEmpty } ?? false
        let whose = set ? "$DIFFEDIT_MEMORY_LIMIT allows" : "this machine has"
        throw ToolError("\(what) needs about \(describe(bytes)) of memory, more than the \(describe(Double(limit))) \(whose) — \(remedy)")
    }
}
