#if canImport(Glibc)
import Glibc
#endif
import COpenBLAS
import Foundation

/// Which OpenBLAS kernel runs the products, and the start-up step that picks a better one when
/// the library does not recognise the CPU.
///
/// OpenBLAS built with DYNAMIC_ARCH chooses its kernel once, when the library loads, from cpuid
/// or from `OPENBLAS_CORETYPE`. A CPU newer than the distribution's OpenBLAS (Debian 12's 0.3.21
/// and Intel's family 6 model 207, say) falls back to the generic `Prescott` kernel, 5–6× slower
/// than `SkylakeX` on the same machine. Since the choice is made before `main` runs, the only
/// way to change it is to set `OPENBLAS_CORETYPE` and start the program again: `BLASKernel.prepare`
/// does that once, at the top of every tool, and only when all of these hold:
/// the user has not set `OPENBLAS_CORETYPE`, the running kernel is one OpenBLAS uses for CPUs
/// without AVX2 (see `isaLevel`), and the CPU (as the kernel reports it in /proc/cpuinfo) has
/// AVX2+FMA or AVX-512. A later BLAS, or our own kernels, slot in by answering `coreName`
/// differently: an unknown name is never overridden.
public enum BLASKernel {
    /// Instruction-set levels, in the order a kernel can use them.
    public enum ISALevel: Int, Comparable, Sendable {
        case baseline = 0, avx = 1, avx2 = 2, avx512 = 3, avx512bf16 = 4
        public static func < (a: ISALevel, b: ISALevel) -> Bool { a.rawValue < b.rawValue }
    }

    /// The CPU features that matter for the choice, as /proc/cpuinfo's `flags` line names them
    /// (Linux lists a feature only when the kernel has enabled its register state).
    public struct CPUFeatures: Equatable, Sendable {
        public var vendor: String
        public var flags: Set<String>

        public init(vendor: String, flags: Set<String>) {
            self.vendor = vendor
            self.flags = flags
        }

        /// Parses the first processor's `vendor_id` and `flags` from /proc/cpuinfo text.
        public init(cpuinfo text: String) {
            var vendor = "", flags = Set<String>()
            for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
                guard let colon = line.firstIndex(of: ":") else { continue }
                let key = line[..<colon].trimmingCharacters(in: .whitespaces)
                let value = line[line.index(after: colon)...]
                if key == "vendor_id" && vendor.isEmpty { vendor = value.trimmingCharacters(in: .whitespaces) }
                if key == "flags" && flags.isEmpty { flags = Set(value.split(separator: " ").map(String.init)) }
                if !vendor.isEmpty && !flags.isEmpty { break }
            }
            self.init(vendor: vendor, flags: flags)
        }

        /// The highest level the CPU supports; AVX-512 needs the F, BW, VL and DQ subsets that
        /// OpenBLAS's SkylakeX kernels use.
        public var level: ISALevel {
            if ["avx512f", "avx512bw", "avx512vl", "avx512dq"].allSatisfy(flags.contains) {
                return flags.contains("avx512_bf16") ? .avx512bf16 : .avx512
            }
            if flags.contains("avx2") && flags.contains("fma") { return .avx2 }
            if flags.contains("avx") { return .avx }
            return .baseline
        }
    }

    /// The level an OpenBLAS core type's kernels use; nil for a name this table does not know
    /// (another architecture, or a newer OpenBLAS): such a kernel is left alone.
    public static func isaLevel(ofCore name: String) -> ISALevel? {
        switch name.lowercased() {
        case "katmai", "coppermine", "northwood", "prescott", "banias", "core2", "penryn", "dunnington",
             "nehalem", "atom", "athlon", "opteron", "opteron_sse3", "barcelona", "nano", "bobcat",
             "unknown", "generic":
            return .baseline
        case "sandybridge", "bulldozer", "piledriver", "steamroller", "excavator":
            return .avx
        case "haswell", "zen":
            return .avx2
        case "skylakex":
            return .avx512
        case "cooperlake", "sapphirerapids":
            return .avx512bf16
        default:
            return nil
        }
    }

    /// The core type to start again with, or nil to keep the running kernel. A pure function
    /// of what OpenBLAS runs, what the CPU has and the environment.
    public static func override(coreName: String, cpu: CPUFeatures, environment: [String: String]) -> String? {
        if let set = environment["OPENBLAS_CORETYPE"], !set.isEmpty { return nil }  // the user's choice wins
        if environment[restartMarker] != nil { return nil }  // already started again once
        guard let running = isaLevel(ofCore: coreName), running < .avx2 else { return nil }
        switch cpu.level {
        case .avx512bf16: return "Cooperlake"
        case .avx512: return "SkylakeX"
        case .avx2: return cpu.vendor == "AuthenticAMD" || cpu.vendor == "HygonGenuine" ? "Zen" : "Haswell"
        case .avx, .baseline: return nil  // nothing better to offer
        }
    }

    /// How long (2^n cycles) OpenBLAS's idle worker threads spin before sleeping, when the user
    /// has not said. OpenBLAS's default, 2^28 cycles (~0.1 s), keeps a worker spinning through
    /// the tools' own parallel loops (attention heads, norms) between products, taking a core
    /// from them: on 2 cores the SD 1.5 64² step ran 9.0–9.5 s with it, 8.4–8.8 s with 2^4.
    public static let threadTimeout = "4"

    /// Everything the process should be started again with (empty: start nothing again):
    /// OPENBLAS_CORETYPE from `override`, and OPENBLAS_THREAD_TIMEOUT when unset. Both are read
    /// by OpenBLAS only when it loads. A user's own values always win.
    public static func environmentOverrides(coreName: String, cpu: CPUFeatures,
                                            environment: [String: String]) -> [String: String] {
        if environment[restartMarker] != nil { return [:] }
        var set: [String: String] = [:]
        if let core = override(coreName: coreName, cpu: cpu, environment: environment) { set["OPENBLAS_CORETYPE"] = core }
        if (environment["OPENBLAS_THREAD_TIMEOUT"] ?? "").isEmpty { set["OPENBLAS_THREAD_TIMEOUT"] = threadTimeout }
        return set
    }

    /// Set in the environment of the restarted process, so that a library that ignores
    /// OPENBLAS_CORETYPE can never make the tools restart in a loop.
    public static let restartMarker = "DIFFEDIT_BLAS_RESTARTED"

    /// The kernel OpenBLAS runs now (e.g. "SkylakeX", "Prescott").
    public static var coreName: String {
        guard let p = openblas_get_corename() else { return "unknown" }
        return String(cString: p)
    }

    /// One line for `--version` and benchmarks: the BLAS, its kernel and how it was chosen.
    public static var description: String {
        let env = ProcessInfo.processInfo.environment
        let how: String
        if env[restartMarker] == "kernel" {
            how = "chosen by diffedit for this CPU"
        } else if let set = env["OPENBLAS_CORETYPE"], !set.isEmpty {
            how = "OPENBLAS_CORETYPE=\(set)"
        } else {
            how = "OpenBLAS's own choice"
        }
        let config = openblas_get_config().map { String(cString: $0) } ?? "OpenBLAS"
        let version = config.split(separator: " ").prefix(2).joined(separator: " ")
        return "\(version), kernel \(coreName) (\(how)), \(openblas_get_num_threads()) threads"
    }

    /// The resolved path of /proc/self/exe when that path still names the running program's
    /// file (same device and inode), else nil.
    static func selfExecutablePath() -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0, n < buffer.count - 1 else { return nil }
        buffer[n] = 0
        let path = String(cString: buffer)
        var running = stat(), named = stat()
        guard path.hasPrefix("/"), stat("/proc/self/exe", &running) == 0, stat(path, &named) == 0,
              running.st_dev == named.st_dev, running.st_ino == named.st_ino else { return nil }
        return path
    }

    /// Call first thing in a tool's main, before any input is read: when
    /// `environmentOverrides` asks for anything, sets it and replaces the process by a fresh
    /// start of the same program with the same arguments, stdin and stdout (once: the restarted
    /// process carries `restartMarker`). Does nothing (and returns) otherwise or if exec fails.
    public static func prepare() {
        #if os(Linux)
        let env = ProcessInfo.processInfo.environment
        guard env[restartMarker] == nil else {
            AddressSpace.settle(env)
            return
        }
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        var set = environmentOverrides(coreName: coreName, cpu: CPUFeatures(cpuinfo: cpuinfo), environment: env)
        // Under `ulimit -v`, start again with one BLAS thread to measure (AddressSpace).
        set.merge(AddressSpace.measuringEnvironment(env, cores: Int(openblas_get_num_procs())), uniquingKeysWith: { $1 })
        guard !set.isEmpty else { return }
        for (key, value) in set { setenv(key, value, 1) }
        setenv(restartMarker, set["OPENBLAS_CORETYPE"] != nil ? "kernel" : "settings", 1)
        fflush(stdout)
        fflush(stderr)
        execSelf()
        // exec failed (no /proc): carry on as we are, and leave the environment as it was so
        // that child processes choose for themselves.
        for key in set.keys { if let old = env[key] { setenv(key, old, 1) } else { unsetenv(key) } }
        unsetenv(restartMarker)
        #endif
    }

    /// Replaces the process by a fresh start of the same program with the same arguments,
    /// stdin and stdout; returns only when exec fails.
    static func execSelf() {
        // The kernel names a process (comm: ps, top, pgrep -x, killall, ps -C) after the file it
        // executes, so exec'ing "/proc/self/exe" itself would rename every tool "exe". Exec the
        // program's own path, argv[0] kept, when it is still the file this process runs;
        // /proc/self/exe only when it is not (renamed over or deleted since the start).
        if let path = selfExecutablePath() { execv(path, CommandLine.unsafeArgv) }
        execv("/proc/self/exe", CommandLine.unsafeArgv)
    }
}
