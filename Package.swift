// swift-tools-version:6.0
import PackageDescription

// Release builds of the numeric core run without overflow/bounds traps: the hot loops are
// written over UnsafeMutableBufferPointers and checked by the parity tests in debug builds.
let fastMath: [SwiftSetting] = [
    .unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release)),
]

let package = Package(
    name: "diffedit",
    products: [
        .library(name: "DiffEditCore", targets: ["DiffEditCore"]),
        .executable(name: "tensor", targets: ["tensor"]),
        .executable(name: "tokenize", targets: ["tokenize"]),
        .executable(name: "encode-text", targets: ["encode-text"]),
        .executable(name: "vae-encode", targets: ["vae-encode"]),
        .executable(name: "vae-decode", targets: ["vae-decode"]),
        .executable(name: "unet-bench", targets: ["unet-bench"]),
        .executable(name: "noise-diff-mask", targets: ["noise-diff-mask"]),
        .executable(name: "invert", targets: ["invert"]),
        .executable(name: "denoise", targets: ["denoise"]),
        .executable(name: "composite", targets: ["composite"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(
            name: "COpenBLAS", path: "Sources/COpenBLAS", pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]),
        // libnetpbm behind a small C shim: pm_error() would exit the process, so the shim
        // installs a setjmp buffer and turns every libnetpbm error into a returned message.
        .target(
            name: "CNetpbm", path: "Sources/CNetpbm",
            cSettings: [.unsafeFlags(["-I/usr/include/netpbm"])],
            linkerSettings: [.linkedLibrary("netpbm")]),
        // Small C kernels that need instructions Swift cannot ask for per function (F16C).
        .target(name: "CKernels", path: "Sources/CKernels", cSettings: [.unsafeFlags(["-O3"])]),
        .target(
            name: "DiffEditCore",
            dependencies: ["COpenBLAS", "CNetpbm", "CKernels"],
            swiftSettings: fastMath),
        // The command-line side shared by the tools (ArgumentParser, option groups, start-up).
        .target(
            name: "DiffEditCLI",
            dependencies: [
                "DiffEditCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: fastMath),
        .executableTarget(name: "tensor", dependencies: ["DiffEditCore", "DiffEditCLI"], swiftSettings: fastMath),
        .executableTarget(name: "tokenize", dependencies: ["DiffEditCore", "DiffEditCLI"], swiftSettings: fastMath),
        .executableTarget(name: "encode-text", dependencies: ["DiffEditCore", "DiffEditCLI"], swiftSettings: fastMath),
        .executableTarget(name: "vae-encode", dependencies: ["DiffEditCore", "DiffEditCLI"], swiftSettings: fastMath),
        .executableTarget(name: "vae-decode", dependencies: ["DiffEditCore", "DiffEditCLI"], swiftSettings: fastMath),
        .executableTarget(name: "unet-bench", dependencies: ["DiffEditCore", "DiffEditCLI"], swiftSettings: fastMath),
        .executableTarget(name: "noise-diff-mask", dependencies: ["DiffEditCore", "DiffEditCLI"], swiftSettings: fastMath),
        .executableTarget(name: "invert", dependencies: ["DiffEditCore", "DiffEditCLI"], swiftSettings: fastMath),
        .executableTarget(name: "denoise", dependencies: ["DiffEditCore", "DiffEditCLI"], swiftSettings: fastMath),
        .executableTarget(name: "composite", dependencies: ["DiffEditCore", "DiffEditCLI"], swiftSettings: fastMath),
        // Tests: helpers shared by both suites (fixtures, running tools, closeness); the core's
        // unit and parity tests by room; the built tools end to end and under hostile input.
        .testTarget(name: "DiffEditTestSupport", dependencies: ["DiffEditCore"]),
        .testTarget(name: "DiffEditCoreTests", dependencies: ["DiffEditCore", "DiffEditTestSupport"]),
        .testTarget(name: "DiffEditToolTests", dependencies: ["DiffEditCore", "DiffEditTestSupport"]),
    ],
    swiftLanguageModes: [.v5]
)
