import Foundation

/// The noise regulariser diffusers' DiffEdit invert borrows from Pix2Pix-Zero: gradient steps
/// that push the predicted noise towards an i.i.d. standard normal, with the gradients of
/// auto_corr_loss and kl_divergence derived by hand (diffusers uses autograd).
///
/// Per regularisation step: `rolls` times
///     ε = get_epsilon(pred, x);  pred ← pred − λ_ac · ∂L_ac/∂pred / rolls
/// then once
///     ε = get_epsilon(pred, x);  pred ← pred − λ_kl · ∂L_kl/∂pred.
public struct InversionRegularizer {
    public var steps: Int
    public var lambdaAutoCorr: Float
    public var lambdaKL: Float
    public var rolls: Int
    /// Sees every roll amount drawn (tests compare them with torch's draws).
    public var rollObserver: ((Int) -> Void)?

    public init(steps: Int = 0, lambdaAutoCorr: Float = 20, lambdaKL: Float = 20, rolls: Int = 5) {
        self.steps = steps
        self.lambdaAutoCorr = lambdaAutoCorr
        self.lambdaKL = lambdaKL
        self.rolls = rolls
    }

    /// get_epsilon(model_output, sample, t) = a·pred + b·sample with, for ᾱ = ᾱ_t of the inverse
    /// scheduler: epsilon a=1, b=0 (no sample term); v_prediction a=√ᾱ, b=√(1−ᾱ);
    /// sample a=−√ᾱ/√(1−ᾱ), b=1/√(1−ᾱ) (written as (x − √ᾱ·pred)/√(1−ᾱ)).
    ///
    /// diffusers passes the CFG-doubled `latent_model_input` [2N, …] as the sample while the
    /// prediction is [N, …]; for v/sample prediction torch broadcasts, so ε has 2N rows (for N=1:
    /// two identical copies) and every loss runs over them. That is reproduced: ε row r uses
    /// prediction row r mod N and sample row r, and gradients of the copies are summed.
    struct Epsilon {
        var rows: Int
        var data: [Float]
    }

    /// Applies the regulariser to a guided prediction `pred` [N, C, h, w]; `sample` is the UNet
    /// input batch [B, C, h, w] (B = 2N with guidance, else N).
    /// `progress` hears after each regularisation step how many are done.
    public func apply(_ pred: Tensor, sample: Tensor, predictionType: PredictionType, alphaProd: Float,
                      generator: TorchGenerator, progress: ((Int) -> Void)? = nil) -> Tensor {
        guard steps > 0 else { return pred }
        var p = pred
        for step in 0..<steps {
            if lambdaAutoCorr > 0 {
                for _ in 0..<rolls {
                    let eps = epsilon(p, sample: sample, type: predictionType, alphaProd: alphaProd)
                    let gE = autoCorrGradient(eps, channels: pred.shape[1], h: pred.shape[2], w: pred.shape[3],
                                              generator: generator)
                    let g = backToPrediction(gE, n: pred.shape[0], inner: pred.count / pred.shape[0], type: predictionType, alphaProd: alphaProd)
                    // grad = var.grad / rolls; pred = pred − λ·grad (each rounded to float)
                    let r = Float(rolls), l = lambdaAutoCorr
                    for i in 0..<p.count { p.data[i] = p.data[i] - l * (g[i] / r) }
                }
            }
            if lambdaKL > 0 {
                let eps = epsilon(p, sample: sample, type: predictionType, alphaProd: alphaProd)
                let gE = klGradient(eps.data)
                let g = backToPrediction(gE, n: pred.shape[0], inner: pred.count / pred.shape[0], type: predictionType, alphaProd: alphaProd)
                let l = lambdaKL
                for i in 0..<p.count { p.data[i] = p.data[i] - l * g[i] }
            }
            progress?(step + 1)
        }
        return p
    }

    func coefficients(_ type: PredictionType, _ alphaProd: Float) -> (a: Float, b: Float) {
        let sa = alphaProd.squareRoot(), sb = (1 - alphaProd).squareRoot()
        switch type {
        case .epsilon: return (1, 0)
        case .vPrediction: return (sa, sb)
        case .sample: return (-sa / sb, 1 / sb)
        }
    }

    func epsilon(_ pred: Tensor, sample: Tensor, type: PredictionType, alphaProd: Float) -> Epsilon {
        if type == .epsilon { return Epsilon(rows: pred.shape[0], data: pred.data) }
        let n = pred.shape[0], rows = max(sample.shape[0], n)
        let inner = pred.count / n
        let sa = alphaProd.squareRoot(), sb = (1 - alphaProd).squareRoot()
        var out = [Float](repeating: 0, count: rows * inner)
        for r in 0..<rows {
            let pr = (r % n) * inner, sr = r * inner
            for i in 0..<inner {
                let v = pred.data[pr + i], x = sample.data[sr + i]
                // as torch evaluates the two expressions of get_epsilon
                out[r * inner + i] = type == .vPrediction ? sa * v + sb * x : (x - sa * v) / sb
            }
        }
        return Epsilon(rows: rows, data: out)
    }

    /// ∂/∂pred of a loss given its gradient over ε's rows: ε row r came from prediction row
    /// r mod n (of `inner` elements) with factor a, so the copies' gradients are summed, then
    /// scaled by a (autograd's order: the broadcast sum, then the product's backward).
    func backToPrediction(_ gE: [Float], n: Int, inner: Int, type: PredictionType, alphaProd: Float) -> [Float] {
        if type == .epsilon { return gE }
        let a = coefficients(type, alphaProd).a
        var g = [Float](repeating: 0, count: n * inner)
        let rows = gE.count / inner
        for r in 0..<rows {
            let pr = (r % n) * inner
            for i in 0..<inner { g[pr + i] += a * gE[r * inner + i] }
        }
        return g
    }

    /// ∂L_ac/∂ε for auto_corr_loss(ε): for each row i and channel j, with one
    /// `torch.randint(H//2)` roll r per pyramid level (levels: the plane, then avg_pool2d(2)
    /// halvings while the height is > 8),
    ///     L += mean(x·roll(x, r, H))² + mean(x·roll(x, r, W))².
    /// For m = (1/n)·Σ_k x_k·x_{k−r}: ∂m/∂x_q = (x_{q−r} + x_{q+r})/n, so ∂(m²)/∂x = 2m·∂m/∂x;
    /// a pooled level's gradient spreads back as g/4 to each pixel of its 2×2 window.
    func autoCorrGradient(_ eps: Epsilon, channels c: Int, h: Int, w: Int, generator: TorchGenerator) -> [Float] {
        var grad = [Float](repeating: 0, count: eps.data.count)
        let plane = h * w
        for i in 0..<eps.rows {
            for j in 0..<c {
                let base = (i * c + j) * plane
                var levels: [(x: [Float], h: Int, w: Int)] = [(Array(eps.data[base..<(base + plane)]), h, w)]
                var levelGrads: [[Float]] = []
                while true {
                    let (x, lh, lw) = levels.last!
                    let r = Int(generator.randint(high: Int64(max(lh / 2, 1)), count: 1)[0])
                    rollObserver?(r)
                    levelGrads.append(InversionRegularizer.rollTermsGradient(x, h: lh, w: lw, shift: r))
                    if lh <= 8 { break }
                    levels.append(InversionRegularizer.avgPool2(x, h: lh, w: lw))
                }
                // Back through the pyramid, coarsest first.
                var g = levelGrads.removeLast()
                while !levelGrads.isEmpty {
                    let fine = levels[levelGrads.count - 1]
                    var up = levelGrads.removeLast()
                    let ph = fine.h / 2, pw = fine.w / 2
                    for y in 0..<ph {
                        for x in 0..<pw {
                            let q = g[y * pw + x] / 4
                            up[(2 * y) * fine.w + 2 * x] += q
                            up[(2 * y) * fine.w + 2 * x + 1] += q
                            up[(2 * y + 1) * fine.w + 2 * x] += q
                            up[(2 * y + 1) * fine.w + 2 * x + 1] += q
                        }
                    }
                    g = up
                }
                for k in 0..<plane { grad[base + k] = g[k] }
            }
        }
        return grad
    }

    /// Gradient of mean(x·roll(x,r,dim H))² + mean(x·roll(x,r,dim W))² for one plane.
    static func rollTermsGradient(_ x: [Float], h: Int, w: Int, shift r: Int) -> [Float] {
        let n = h * w
        var g = [Float](repeating: 0, count: n)
        // roll along H: y[yy, xx] = x[(yy − r) mod h, xx]
        func accumulate(_ index: (Int, Int, Int) -> Int) {
            var m: Double = 0
            for yy in 0..<h { for xx in 0..<w { m += Double(x[yy * w + xx]) * Double(x[index(yy, xx, -r)]) } }
            m /= Double(n)
            let scale = 2 * m / Double(n)
            for yy in 0..<h {
                for xx in 0..<w {
                    let q = yy * w + xx
                    g[q] += Float(scale * (Double(x[index(yy, xx, -r)]) + Double(x[index(yy, xx, r)])))
                }
            }
        }
        accumulate { yy, xx, s in (((yy + s) % h + h) % h) * w + xx }
        accumulate { yy, xx, s in yy * w + (((xx + s) % w + w) % w) }
        return g
    }

    /// avg_pool2d(kernel 2, stride 2): a trailing odd row or column is dropped.
    static func avgPool2(_ x: [Float], h: Int, w: Int) -> (x: [Float], h: Int, w: Int) {
        let ph = h / 2, pw = w / 2
        var out = [Float](repeating: 0, count: ph * pw)
        for y in 0..<ph {
            for xx in 0..<pw {
                let s = x[(2 * y) * w + 2 * xx] + x[(2 * y) * w + 2 * xx + 1]
                    + x[(2 * y + 1) * w + 2 * xx] + x[(2 * y + 1) * w + 2 * xx + 1]
                out[y * pw + xx] = s / 4
            }
        }
        return (out, ph, pw)
    }

    /// ∂/∂ε of kl_divergence(ε) = var(ε) + mean(ε)² − 1 − log(var(ε) + 1e-7), var unbiased
    /// over all n elements: ∂var/∂ε_k = 2(ε_k − μ)/(n − 1), ∂μ/∂ε_k = 1/n, so
    ///     ∂L/∂ε_k = (1 − 1/(var + 1e-7))·2(ε_k − μ)/(n − 1) + 2μ/n.
    func klGradient(_ e: [Float]) -> [Float] {
        let n = Double(e.count)
        let mu = e.reduce(0.0) { $0 + Double($1) } / n
        let v = e.reduce(0.0) { $0 + (Double($1) - mu) * (Double($1) - mu) } / (n - 1)
        let k = 1 - 1 / (Double(Float(v)) + 1e-7)
        return e.map { Float(k * 2 * (Double($0) - mu) / (n - 1) + 2 * mu / n) }
    }
}
