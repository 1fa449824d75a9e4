import Foundation

/// What DPMSolverMultistepScheduler and DPMSolverMultistepInverseScheduler share: the schedule
/// set by setTimesteps, the step counter, the history of data predictions, and the multistep
/// DPM-Solver++ update of Lu et al. 2022 ("DPM-Solver++: Fast Solver for Guided Sampling of
/// Diffusion Probabilistic Models", arXiv 2211.01095) in diffusers' form. The two schedulers
/// differ only in their timesteps and σ, and in when the last step is first order.
///
/// Notation (diffusers'): σ is the schedule's σ = √((1 − ᾱ)/ᾱ); a latent at σ is α·x₀ + σ_t·ε
/// with α = 1/√(σ² + 1), σ_t = σ·α; λ = log α − log σ_t (half the log-SNR); h = λ_t − λ_s.
/// Every scalar is a float32 0-dim tensor in diffusers and every elementwise operation is rounded
/// to float32 in torch's order, so the same is done here.
struct DPMSolverMultistep {
    let order: Int
    let solverType: DPMSolverConfig.SolverType
    let algorithm: DPMSolverConfig.Algorithm
    let predictionType: PredictionType
    let lowerOrderFinal: Bool
    let eulerAtFinal: Bool
    /// The schedule, in stepping order, and σ at each timestep followed by the σ the last step
    /// reaches (empty before setTimesteps).
    let timesteps: [Int]
    let sigmas: [Float]
    /// model_outputs: the data predictions x̂₀ of the last `order` steps, oldest first.
    private(set) var dataPredictions: [Tensor?]
    /// lower_order_nums: steps taken since setTimesteps, at most `order`.
    private(set) var lowerOrderSteps = 0
    /// step_index: the place in the schedule of the next step (set by the first one).
    private var stepIndex: Int?

    /// A fresh solver on a schedule (what diffusers' set_timesteps resets).
    init(_ config: DPMSolverConfig, timesteps: [Int] = [], sigmas: [Float] = []) {
        order = config.solverOrder
        solverType = config.solverType
        algorithm = config.algorithm
        predictionType = config.predictionType
        lowerOrderFinal = config.lowerOrderFinal
        eulerAtFinal = config.eulerAtFinal
        self.timesteps = timesteps
        self.sigmas = sigmas
        dataPredictions = Array(repeating: nil, count: config.solverOrder)
    }

    /// diffusers' step, for the scheduler called `name`, from σ_s = sigmas[i] to
    /// σ_t = sigmas[i + 1]. The first step after setTimesteps finds its place i in the schedule
    /// (diffusers' _init_step_index; it may start anywhere, as the pipeline's strength does), the
    /// ones after must follow in order. The model output becomes the data prediction x̂₀
    /// (convert_model_output), joins the history, and the multistep update (`update`) is of order
    /// 1 on the first step, for a first-order solver, or on the last step with euler_at_final,
    ///   with lower_order_final below 15 steps, or when `firstOrderLastStep` (the forward
    ///   scheduler's final σ of zero);
    /// 2 on the second step, for a second-order solver, or on the step before the last with
    ///   lower_order_final below 15 steps;
    /// 3 otherwise.
    ///
    /// sde-dpmsolver++ (`algorithm`) takes each step's noise z as `noise` (diffusers'
    /// variance_noise) and runs `sdeUpdate` instead, of order 1 or 2 by the same rules.
    mutating func step(modelOutput: Tensor, timestep t: Int, sample: Tensor, scheduler name: String,
                       firstOrderLastStep: Bool, noise: Tensor? = nil) throws -> Tensor {
        let i = try place(of: t, modelOutput: modelOutput, sample: sample, scheduler: "\(name) step")
        if algorithm == .sdeDPMSolverPlusPlus {
            guard let noise, noise.shape == sample.shape else {
                throw ToolError("\(name) step: sde-dpmsolver++ needs the step's noise with the sample's shape \(sample.shape)")
            }
            let n = timesteps.count
            let lastFirstOrder = i == n - 1 && (eulerAtFinal || (lowerOrderFinal && n < 15) || firstOrderLastStep)
            remember(dataPrediction(modelOutput, sample: sample, sigma: sigmas[i]))
            let stepOrder = order == 1 || lowerOrderSteps < 1 || lastFirstOrder ? 1 : 2
            let out = sdeUpdate(order: stepOrder, sample: sample, noise: noise, index: i, solverType: solverType)
            lowerOrderSteps = min(lowerOrderSteps + 1, order)
            stepIndex = i + 1
            return out
        }
        guard noise == nil else { throw ToolError("\(name) step: dpmsolver++ is deterministic and takes no noise") }
        let n = timesteps.count
        let lastFirstOrder = i == n - 1 && (eulerAtFinal || (lowerOrderFinal && n < 15) || firstOrderLastStep)
        let beforeLastSecondOrder = i == n - 2 && lowerOrderFinal && n < 15
        remember(dataPrediction(modelOutput, sample: sample, sigma: sigmas[i]))
        let stepOrder: Int
        if order == 1 || lowerOrderSteps < 1 || lastFirstOrder {
            stepOrder = 1
        } else if order == 2 || lowerOrderSteps < 2 || beforeLastSecondOrder {
            stepOrder = 2
        } else {
            stepOrder = 3
        }
        let out = update(order: stepOrder, sample: sample, sigmaT: sigmas[i + 1], sigmaS: sigmas[i],
                         sigmaS1: stepOrder >= 2 ? sigmas[i - 1] : 0, sigmaS2: stepOrder == 3 ? sigmas[i - 2] : 0)
        lowerOrderSteps = min(lowerOrderSteps + 1, order)
        stepIndex = i + 1
        return out
    }

    /// The place in the schedule of a step at timestep t: found on the first step after
    /// setTimesteps (diffusers' _init_step_index), then the counter, which t must match.
    private func place(of t: Int, modelOutput: Tensor, sample: Tensor, scheduler name: String) throws -> Int {
        guard !timesteps.isEmpty else { throw ToolError("\(name) called before setTimesteps") }
        guard modelOutput.shape == sample.shape else {
            throw ToolError("\(name): model output \(modelOutput.shape) and sample \(sample.shape) differ in shape")
        }
        let i = try stepIndex ?? DPMSolverConfig.index(of: t, in: timesteps, scheduler: name)
        guard i < timesteps.count, timesteps[i] == t else {
            throw ToolError("\(name): timestep \(t) is not the next one of the schedule — the multistep solver steps through it in order")
        }
        return i
    }

    /// model_outputs shifted by one, the newest data prediction last.
    private mutating func remember(_ x0: Tensor) {
        dataPredictions.removeFirst()
        dataPredictions.append(x0)
    }

    /// The SDE form's factors from σ_s = sigmas[i] to σ_t = sigmas[i + 1], each a float32 scalar
    /// as diffusers computes it: (σ_t/σ_s·e^{−h}, α_t(1 − e^{−2h}), σ_t√(1 − e^{−2h}), h), σ_t and
    /// σ_s the σ_t of `alphaSigma`. At the final σ of zero h = +∞ and they are (0, 1, 0, ∞).
    private func sdeFactors(index i: Int) -> (ratio: Float, c0: Float, sigma: Float, h: Float, alphaT: Float) {
        let (alphaT, sT) = Self.alphaSigma(sigmas[i + 1])
        let (alphaS, sS) = Self.alphaSigma(sigmas[i])
        let h = (log(alphaT) - log(sT)) - (log(alphaS) - log(sS))
        let ratio = sT / sS * exp(-h)
        let e2 = exp(-2 * h)
        return (ratio, alphaT * (1 - e2), sT * (1 - e2).squareRoot(), h, alphaT)
    }

    /// sde-dpmsolver++'s update from σ_s = sigmas[i] to σ_t = sigmas[i + 1] with the step's noise z
    /// (diffusers' dpm_solver_first_order_update and multistep_dpm_solver_second_order_update,
    /// sde-dpmsolver++ branches), D0 = x̂₀ of this step, m1 that of the step before,
    /// D1 = (D0 − m1)/r₀, r₀ = h₀/h:
    ///
    ///   order 1:   x_t = (σ_t/σ_s·e^{−h})·x + α_t(1 − e^{−2h})·D0 + σ_t√(1 − e^{−2h})·z
    ///   midpoint:  x_t = (σ_t/σ_s·e^{−h})·x + α_t(1 − e^{−2h})·D0 + ½·α_t(1 − e^{−2h})·D1 + σ_t√(1 − e^{−2h})·z
    ///   heun:      … + α_t((1 − e^{−2h})/(−2h) + 1)·D1 + σ_t√(1 − e^{−2h})·z
    ///
    /// With `noise` nil the last term is left out (the mean μ the LEDITS++ inversion solves from).
    func sdeUpdate(order stepOrder: Int, sample: Tensor, noise: Tensor?, index i: Int,
                   solverType type: DPMSolverConfig.SolverType) -> Tensor {
        let f = sdeFactors(index: i)
        let d0 = dataPredictions[order - 1]!
        var c1: Float = 0, invR0: Float = 0
        var m1 = d0
        if stepOrder == 2 {
            let (alphaS1, sS1) = Self.alphaSigma(sigmas[i - 1])
            let (alphaS0, sS0) = Self.alphaSigma(sigmas[i])
            let lambdaS0 = log(alphaS0) - log(sS0)
            let h0 = lambdaS0 - (log(alphaS1) - log(sS1))
            invR0 = 1 / (h0 / f.h)
            let e2 = exp(-2 * f.h)
            c1 = type == .midpoint ? 0.5 * (f.alphaT * (1 - e2)) : f.alphaT * ((1 - e2) / (-2 * f.h) + 1)
            m1 = dataPredictions[order - 2]!
        }
        var out = [Float](repeating: 0, count: sample.count)
        sample.data.withUnsafeBufferPointer { x in
            d0.data.withUnsafeBufferPointer { m0 in
                m1.data.withUnsafeBufferPointer { m1 in
                    out.withUnsafeMutableBufferPointer { o in
                        for k in 0..<o.count {
                            var v = f.ratio * x[k] + f.c0 * m0[k]
                            if stepOrder == 2 { v = v + c1 * (invR0 * (m0[k] - m1[k])) }
                            o[k] = v
                        }
                        if let noise {
                            noise.data.withUnsafeBufferPointer { z in
                                for k in 0..<o.count { o[k] = o[k] + f.sigma * z[k] }
                            }
                        }
                    }
                }
            }
        }
        return Tensor(shape: sample.shape, data: out)
    }

    /// The LEDITS++ pipeline's `compute_noise_sde_dpm_pp_2nd`: the step from `sample` (xₜ) at
    /// timestep t as sde-dpmsolver++ would take it without noise (μ: first order on the first
    /// step, the midpoint second order after, whatever lower_order_final and the solver type say —
    /// the pipeline's own update), and the noise z that carries it to `previous` (xₜ₋₁):
    /// z = (xₜ₋₁ − μ)/σ with σ = σ_t√(1 − e^{−2h}) (z = 0 where σ = 0, the last step to the
    /// final σ of zero), and the latent reached, μ + σ·z, which replaces xₜ₋₁. Keeps the
    /// scheduler's state as a step does: the history of data predictions, lower_order_nums and
    /// the step index.
    mutating func computeNoise(previous: Tensor, sample: Tensor, timestep t: Int, modelOutput: Tensor,
                               scheduler name: String) throws -> (noise: Tensor, corrected: Tensor) {
        let i = try place(of: t, modelOutput: modelOutput, sample: sample, scheduler: "\(name) compute_noise")
        guard previous.shape == sample.shape else {
            throw ToolError("\(name) compute_noise: latents \(previous.shape) and \(sample.shape) differ in shape")
        }
        remember(dataPrediction(modelOutput, sample: sample, sigma: sigmas[i]))
        let stepOrder = lowerOrderSteps < 1 ? 1 : 2
        if stepOrder == 2 && i == 0 {
            throw ToolError("\(name) compute_noise: a second-order step at the first timestep has no previous σ")
        }
        let mu = sdeUpdate(order: stepOrder, sample: sample, noise: nil, index: i, solverType: .midpoint)
        let sigma = sdeFactors(index: i).sigma
        var noise = [Float](repeating: 0, count: sample.count)
        var corrected = [Float](repeating: 0, count: sample.count)
        mu.data.withUnsafeBufferPointer { m in
            previous.data.withUnsafeBufferPointer { p in
                for k in 0..<m.count {
                    // diffusers: noise = tensor([0.0]) when σ = 0, broadcast
                    let z: Float = sigma > 0 ? (p[k] - m[k]) / sigma : 0
                    noise[k] = z
                    corrected[k] = m[k] + sigma * z
                }
            }
        }
        lowerOrderSteps = min(lowerOrderSteps + 1, order)
        stepIndex = i + 1
        return (Tensor(shape: sample.shape, data: noise), Tensor(shape: sample.shape, data: corrected))
    }

    /// diffusers' _sigma_to_alpha_sigma_t: α = 1/√(σ² + 1), σ_t = σ·α.
    @inline(__always)
    static func alphaSigma(_ sigma: Float) -> (alpha: Float, sigma: Float) {
        let alpha = 1 / (sigma * sigma + 1).squareRoot()
        return (alpha, sigma * alpha)
    }

    /// λ = log α − log σ_t (+∞ at σ = 0, the forward scheduler's final "zero" σ).
    @inline(__always)
    static func lambda(_ sigma: Float) -> Float {
        let (a, s) = alphaSigma(sigma)
        return log(a) - log(s)
    }

    /// convert_model_output for DPM-Solver++: the data prediction x̂₀ at σ (Lu et al. 2022, §3:
    /// the solver integrates the data-prediction model).
    ///   epsilon:       x̂₀ = (x − σ_t·ε̂)/α
    ///   v_prediction:  x̂₀ = α·x − σ_t·v̂
    ///   sample:        x̂₀ = the model output
    func dataPrediction(_ modelOutput: Tensor, sample: Tensor, sigma: Float) -> Tensor {
        let (a, s) = Self.alphaSigma(sigma)
        switch predictionType {
        case .epsilon: return Elementwise.map2(sample, modelOutput) { x, e in (x - s * e) / a }
        case .vPrediction: return Elementwise.map2(sample, modelOutput) { x, v in a * x - s * v }
        case .sample: return modelOutput
        }
    }

    /// The multistep DPM-Solver++ update from σ_s to σ_t (diffusers' dpm_solver_first_order_update,
    /// multistep_dpm_solver_second_order_update and _third_order_update), with D0 = x̂₀ of this
    /// step, m1, m2 those of the one and two steps before, h = λ_t − λ_s0, h₀ = λ_s0 − λ_s1,
    /// h₁ = λ_s1 − λ_s2, r₀ = h₀/h, r₁ = h₁/h:
    ///
    ///   order 1 (the paper's eq. (8), DDIM in λ):  x_t = (σ_t/σ_s)·x − α_t(e^{−h} − 1)·D0
    ///   order 2, D1 = (D0 − m1)/r₀ (Algorithm 2, "DPM-Solver++(2M)"):
    ///     midpoint:  x_t = (σ_t/σ_s)·x − α_t(e^{−h} − 1)·D0 − ½·α_t(e^{−h} − 1)·D1
    ///     heun:      x_t = (σ_t/σ_s)·x − α_t(e^{−h} − 1)·D0 + α_t((e^{−h} − 1)/h + 1)·D1
    ///   order 3, D1₀ = (D0 − m1)/r₀, D1₁ = (m1 − m2)/r₁, D1 = D1₀ + r₀/(r₀ + r₁)·(D1₀ − D1₁),
    ///   D2 = (D1₀ − D1₁)/(r₀ + r₁):
    ///     x_t = (σ_t/σ_s)·x − α_t(e^{−h} − 1)·D0 + α_t((e^{−h} − 1)/h + 1)·D1
    ///           − α_t((e^{−h} − 1 + h)/h² − ½)·D2
    ///
    /// where σ_t, σ_s are the σ_t of `alphaSigma`. At σ_t = 0 (the forward scheduler's final
    /// "zero" σ, always first order) h = +∞ and the update returns D0 = x̂₀ exactly.
    func update(order stepOrder: Int, sample: Tensor, sigmaT: Float, sigmaS: Float, sigmaS1: Float, sigmaS2: Float) -> Tensor {
        let (alphaT, sT) = Self.alphaSigma(sigmaT)
        let (_, s0) = Self.alphaSigma(sigmaS)
        let lambdaT = log(alphaT) - log(sT), lambdaS0 = Self.lambda(sigmaS)
        let h = lambdaT - lambdaS0
        let expm = exp(-h) - 1
        let ratio = sT / s0                // σ_t/σ_s
        let c0 = alphaT * expm             // α_t(e^{−h} − 1)
        let d0 = dataPredictions[order - 1]!
        var out = [Float](repeating: 0, count: sample.count)
        sample.data.withUnsafeBufferPointer { x in
            d0.data.withUnsafeBufferPointer { m0 in
                out.withUnsafeMutableBufferPointer { o in
                    switch stepOrder {
                    case 1:
                        for k in 0..<o.count { o[k] = ratio * x[k] - c0 * m0[k] }
                    case 2:
                        let r0 = (lambdaS0 - Self.lambda(sigmaS1)) / h
                        let invR0 = 1 / r0
                        let c1 = solverType == .midpoint ? 0.5 * c0 : alphaT * (expm / h + 1)
                        let m1 = dataPredictions[order - 2]!
                        m1.data.withUnsafeBufferPointer { m1 in
                            for k in 0..<o.count {
                                let d1 = invR0 * (m0[k] - m1[k])
                                let base = ratio * x[k] - c0 * m0[k]
                                o[k] = solverType == .midpoint ? base - c1 * d1 : base + c1 * d1
                            }
                        }
                    default:
                        let lambdaS1 = Self.lambda(sigmaS1)
                        let r0 = (lambdaS0 - lambdaS1) / h, r1 = (lambdaS1 - Self.lambda(sigmaS2)) / h
                        let invR0 = 1 / r0, invR1 = 1 / r1
                        let mix = r0 / (r0 + r1), invSum = 1 / (r0 + r1)
                        let c1 = alphaT * (expm / h + 1)
                        let c2 = alphaT * ((expm + h) / (h * h) - 0.5)
                        let m1 = dataPredictions[order - 2]!, m2 = dataPredictions[order - 3]!
                        m1.data.withUnsafeBufferPointer { m1 in
                            m2.data.withUnsafeBufferPointer { m2 in
                                for k in 0..<o.count {
                                    let d10 = invR0 * (m0[k] - m1[k]), d11 = invR1 * (m1[k] - m2[k])
                                    let d1 = d10 + mix * (d10 - d11)
                                    let d2 = invSum * (d10 - d11)
                                    o[k] = ((ratio * x[k] - c0 * m0[k]) + c1 * d1) - c2 * d2
                                }
                            }
                        }
                    }
                }
            }
        }
        return Tensor(shape: sample.shape, data: out)
    }
}
