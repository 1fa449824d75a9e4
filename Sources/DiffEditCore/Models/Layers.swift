import Foundation

// Layers shared by the models (UNet, VAE): weights loaded once by name with their shapes
// checked, and laid out for the kernels.

/// Where model weights come from: a checkpoint's WeightStore, or generated values.
protocol WeightSource {
    func load(_ name: String, shape: [Int]) throws -> [Float]
}

extension WeightStore: WeightSource {}

/// Deterministic pseudo-random weights for benchmarks and tests without a checkpoint:
/// uniform in ±1/√fan_in for matrices and kernels, 1 for norm scales, small values for biases.
struct RandomWeights: WeightSource {
    let seed: UInt64

    func load(_ name: String, shape: [Int]) throws -> [Float] {
        let count = shape.reduce(1, *)
        if shape.count == 1 && name.hasSuffix(".weight") && name.contains("norm") {
            return [Float](repeating: 1, count: count)
        }
        let fanIn = shape.count > 1 ? shape.dropFirst().reduce(1, *) : 100
        let bound = 1 / Float(fanIn).squareRoot()
        // FNV-1a of the name (String.hashValue is seeded per process).
        var state: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in name.utf8 { state = (state ^ UInt64(byte)) &* 0x100_0000_01b3 }
        state = (state ^ seed) | 1
        return [Float](unsafeUninitializedCapacity: count) { buf, n in
            for i in 0..<count {
                // xorshift64*: plenty for weights nobody looks at.
                state ^= state >> 12; state ^= state << 25; state ^= state >> 27
                let r = (state &* 2_685_821_657_736_338_717) >> 40
                buf[i] = (Float(r) * (1.0 / 16_777_216.0) * 2 - 1) * bound
            }
            n = count
        }
    }
}

/// Loads weights by name, checking every shape.
struct WeightLoader {
    let store: any WeightSource

    func load(_ name: String, _ shape: [Int]) throws -> [Float] { try store.load(name, shape: shape) }

    func linear(_ p: String, in i: Int, out o: Int, bias: Bool = true) throws -> LinearLayer {
        LinearLayer(weight: try load("\(p).weight", [o, i]), bias: bias ? try load("\(p).bias", [o]) : nil,
                    inFeatures: i, outFeatures: o)
    }

    func conv(_ p: String, in i: Int, out o: Int, kernel k: Int, stride: Int = 1,
              padding: Conv2D.Padding) throws -> Conv2DLayer {
        Conv2DLayer(weight: try load("\(p).weight", [o, i, k, k]), bias: try load("\(p).bias", [o]),
                  inChannels: i, outChannels: o, kernel: k, stride: stride, padding: padding)
    }

    func groupNorm(_ p: String, channels c: Int, groups: Int, eps: Float) throws -> GroupNormLayer {
        GroupNormLayer(weight: try load("\(p).weight", [c]), bias: try load("\(p).bias", [c]), groups: groups, eps: eps)
    }

    func layerNorm(_ p: String, dim d: Int, eps: Float = 1e-5) throws -> LayerNormLayer {
        LayerNormLayer(weight: try load("\(p).weight", [d]), bias: try load("\(p).bias", [d]), eps: eps)
    }
}

/// torch.nn.Linear.
struct LinearLayer {
    let weight: [Float]
    let bias: [Float]?
    let inFeatures: Int
    let outFeatures: Int

    func callAsFunction(_ x: Tensor) -> Tensor {
        Profile.measure("linear") { Linear.forward(x, weight: weight, bias: bias, outFeatures: outFeatures) }
    }

    /// Several linears over the same input fused into one GEMM (their weights stacked).
    static func stacked(_ parts: [LinearLayer]) -> LinearLayer {
        let i = parts[0].inFeatures
        precondition(parts.allSatisfy { $0.inFeatures == i })
        let hasBias = parts.contains { $0.bias != nil }
        return LinearLayer(weight: parts.flatMap(\.weight),
                           bias: hasBias ? parts.flatMap { $0.bias ?? [Float](repeating: 0, count: $0.outFeatures) } : nil,
                           inFeatures: i, outFeatures: parts.reduce(0) { $0 + $1.outFeatures })
    }
}

/// torch.nn.Conv2d (groups 1). Stride-1 convolutions with a spatial kernel keep their weight
/// packed for Conv2D.forwardShifted; 1×1 and strided ones use Conv2D.forward.
struct Conv2DLayer {
    let weight: [Float]
    let bias: [Float]?
    let inChannels: Int
    let outChannels: Int
    let kernel: Int
    let stride: Int
    let padding: Conv2D.Padding
    let shifted: Bool

    init(weight: [Float], bias: [Float]?, inChannels: Int, outChannels: Int, kernel: Int, stride: Int,
         padding: Conv2D.Padding) {
        shifted = stride == 1 && kernel > 1
        self.weight = shifted
            ? Conv2D.packShifted(weight: weight, outChannels: outChannels, inChannels: inChannels, kernel: (kernel, kernel))
            : weight
        self.bias = bias
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        precondition(x.shape[1] == inChannels, "conv expects \(inChannels) channels, got \(x.shape)")
        if shifted {
            return Profile.measure("conv shifted \(x.shape[2])x\(x.shape[3]) \(inChannels)->\(outChannels)") { Conv2D.forwardShifted(x, packedWeight: weight, bias: bias, outChannels: outChannels,
                                         kernel: (kernel, kernel), padding: padding) }
        }
        return Profile.measure("conv im2col") { Conv2D.forward(x, weight: weight, bias: bias, outChannels: outChannels,
                              kernel: (kernel, kernel), stride: stride, padding: padding) }
    }

    /// Multiply–accumulate count for an output of `outPixels` positions per image.
    func macs(outPixels: Int) -> Int { outChannels * inChannels * kernel * kernel * outPixels }
}

/// torch.nn.GroupNorm (affine), optionally followed by SiLU.
struct GroupNormLayer {
    let weight: [Float]
    let bias: [Float]
    let groups: Int
    let eps: Float

    func callAsFunction(_ x: Tensor, silu: Bool = false) -> Tensor {
        Profile.measure("groupnorm") { Normalization.groupNorm(x, groups: groups, weight: weight, bias: bias, eps: eps, silu: silu) }
    }
}

/// torch.nn.LayerNorm over the last dimension.
struct LayerNormLayer {
    let weight: [Float]
    let bias: [Float]
    let eps: Float

    func callAsFunction(_ x: Tensor) -> Tensor {
        Profile.measure("layernorm") { Normalization.layerNorm(x, weight: weight, bias: bias, eps: eps) }
    }
}

extension GroupNormLayer {
    /// A GroupNorm read from a checkpoint (eps 1e-6 unless given: the VAE's and UNet's value).
    init(_ store: WeightStore, _ prefix: String, channels: Int, groups: Int, eps: Float = 1e-6) throws {
        self = try WeightLoader(store: store).groupNorm(prefix, channels: channels, groups: groups, eps: eps)
    }
}

extension Conv2DLayer {
    /// A square-kernel conv read from a checkpoint; the bias is optional.
    init(_ store: WeightStore, _ prefix: String, in inChannels: Int, out outChannels: Int, kernel: Int,
         stride: Int = 1, padding: Conv2D.Padding) throws {
        self.init(weight: try store.load(prefix + ".weight", shape: [outChannels, inChannels, kernel, kernel]),
                  bias: try store.loadIfPresent(prefix + ".bias", shape: [outChannels]),
                  inChannels: inChannels, outChannels: outChannels, kernel: kernel, stride: stride,
                  padding: padding)
    }
}
