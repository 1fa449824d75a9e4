import XCTest
@testable import DiffEditCore
import DiffEditTestSupport

/// The start-up choice of OpenBLAS kernel (BLASKernel.override) as a table of cases: what
/// OpenBLAS runs, what the CPU has, what the environment says. No timing.
final class BLASKernelTests: XCTestCase {
    static let avx512bf16: Set<String> = ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                                          "avx512_bf16", "avx512_fp16"]
    static let avx512: Set<String> = ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"]
    static let avx2: Set<String> = ["sse4_2", "avx", "avx2", "fma"]
    static let avxOnly: Set<String> = ["sse4_2", "avx"]

    func testDecisionTable() {
        let intel = "GenuineIntel", amd = "AuthenticAMD"
        let cases: [(core: String, vendor: String, flags: Set<String>, env: [String: String], want: String?, why: String)] = [
            // The 2026-11-30 machine: Debian's 0.3.21 does not know family 6 model 207.
            ("Prescott", intel, Self.avx512bf16, [:], "Cooperlake", "generic kernel on an AVX512-BF16 CPU"),
            ("Prescott", intel, Self.avx512, [:], "SkylakeX", "generic kernel on an AVX-512 CPU"),
            ("Prescott", intel, Self.avx2, [:], "Haswell", "generic kernel on an AVX2 Intel CPU"),
            ("Prescott", amd, Self.avx2, [:], "Zen", "generic kernel on an AVX2 AMD CPU"),
            ("Sandybridge", intel, Self.avx512, [:], "SkylakeX", "AVX-only kernel on an AVX-512 CPU"),
            ("Nehalem", amd, Self.avx512bf16, [:], "Cooperlake", "AMD Zen 4 with AVX512-BF16"),
            ("Core2", intel, Self.avx2, [:], "Haswell", "another generic name"),
            // Nothing to gain, or not ours to change.
            ("Prescott", intel, Self.avxOnly, [:], nil, "no AVX2 on the CPU: nothing better"),
            ("Prescott", intel, [], [:], nil, "unknown CPU features"),
            ("Haswell", intel, Self.avx512, [:], nil, "an AVX2 kernel is kept (OpenBLAS chose it knowingly)"),
            ("Zen", amd, Self.avx512bf16, [:], nil, "OpenBLAS's own AVX2 choice is kept"),
            ("SkylakeX", intel, Self.avx512bf16, [:], nil, "already AVX-512"),
            ("Cooperlake", amd, Self.avx512bf16, [:], nil, "already the best"),
            ("ARMV8", "", [], [:], nil, "another architecture"),
            ("NeoverseN1", "", ["asimd"], [:], nil, "unknown name: left alone"),
            ("Prescott", intel, Self.avx512, ["OPENBLAS_CORETYPE": "Prescott"], nil, "the user's choice wins"),
            ("Prescott", intel, Self.avx512, ["OPENBLAS_CORETYPE": ""], "SkylakeX", "an empty variable is unset"),
            ("Prescott", intel, Self.avx512, [BLASKernel.restartMarker: "1"], nil, "never restart twice"),
        ]
        for c in cases {
            let got = BLASKernel.override(coreName: c.core, cpu: .init(vendor: c.vendor, flags: c.flags), environment: c.env)
            XCTAssertEqual(got, c.want, "\(c.core) on \(c.vendor) \(c.flags.sorted()) env \(c.env): \(c.why)")
        }
    }

    /// What the tools start again with: the kernel when `override` says so, and OpenBLAS's idle
    /// spin when the user has not set it; nothing twice, nothing over a user's value.
    func testEnvironmentOverrides() {
        let cpu = BLASKernel.CPUFeatures(vendor: "GenuineIntel", flags: Self.avx512bf16)
        let timeout = BLASKernel.threadTimeout
        XCTAssertEqual(BLASKernel.environmentOverrides(coreName: "Prescott", cpu: cpu, environment: [:]),
                       ["OPENBLAS_CORETYPE": "Cooperlake", "OPENBLAS_THREAD_TIMEOUT": timeout])
        XCTAssertEqual(BLASKernel.environmentOverrides(coreName: "Cooperlake", cpu: cpu, environment: [:]),
                       ["OPENBLAS_THREAD_TIMEOUT": timeout])
        XCTAssertEqual(BLASKernel.environmentOverrides(coreName: "Cooperlake", cpu: cpu,
                                                       environment: ["OPENBLAS_THREAD_TIMEOUT": "28"]), [:])
        XCTAssertEqual(BLASKernel.environmentOverrides(coreName: "Prescott", cpu: cpu,
                                                       environment: ["OPENBLAS_CORETYPE": "Prescott", "OPENBLAS_THREAD_TIMEOUT": "20"]), [:])
        XCTAssertEqual(BLASKernel.environmentOverrides(coreName: "Prescott", cpu: cpu,
                                                       environment: [BLASKernel.restartMarker: "settings"]), [:])
    }

    func testCoreNamesCoverTheLevels() {
        XCTAssertEqual(BLASKernel.isaLevel(ofCore: "Prescott"), .baseline)
        XCTAssertEqual(BLASKernel.isaLevel(ofCore: "PRESCOTT"), .baseline)
        XCTAssertEqual(BLASKernel.isaLevel(ofCore: "Haswell"), .avx2)
        XCTAssertEqual(BLASKernel.isaLevel(ofCore: "SkylakeX"), .avx512)
        XCTAssertEqual(BLASKernel.isaLevel(ofCore: "Cooperlake"), .avx512bf16)
        XCTAssertNil(BLASKernel.isaLevel(ofCore: "SomeFutureLake"))
        // Every core the decision can ask for is one this table knows as at least AVX2, so a
        // restarted process is never asked to restart again.
        for core in ["Cooperlake", "SkylakeX", "Haswell", "Zen"] {
            XCTAssertGreaterThanOrEqual(BLASKernel.isaLevel(ofCore: core)!, .avx2, core)
        }
    }

    func testCPUInfoParsing() {
        let text = """
            processor\t: 0
            vendor_id\t: GenuineIntel
            cpu family\t: 6
            model\t\t: 207
            flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_fp16
            bugs\t\t: spectre_v1

            processor\t: 1
            vendor_id\t: GenuineIntel
            flags\t\t: fpu sse
            """
        let cpu = BLASKernel.CPUFeatures(cpuinfo: text)
        XCTAssertEqual(cpu.vendor, "GenuineIntel")
        XCTAssertEqual(cpu.level, .avx512bf16)
        XCTAssertTrue(cpu.flags.contains("avx512_fp16"))
        XCTAssertEqual(BLASKernel.CPUFeatures(cpuinfo: "").level, .baseline)
        XCTAssertEqual(BLASKernel.CPUFeatures(cpuinfo: "flags : avx avx2").level, .avx, "AVX2 without FMA")
        // This machine: whatever OpenBLAS runs must not be below what the decision would pick.
        if let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) {
            let here = BLASKernel.CPUFeatures(cpuinfo: info)
            XCTAssertFalse(here.vendor.isEmpty || here.flags.isEmpty, "parsed this machine's /proc/cpuinfo")
        }
    }
}
