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

    /// Throws when `bytes` is more than the machine has.
    public static func require(_ bytes: Double, for what: String, remedy: String) throws {
        guard let limit = try limitBytes, bytes > Double(limit) else { return }
        throw ToolError("\(what) needs about \(describe(bytes)) of memory, more than the \(describe(Double(limit))) this machine has — \(remedy)")
    }
}
