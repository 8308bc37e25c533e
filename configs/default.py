"""The paper's recipe: every field veinjax reads, with its default.

ResNet34-UNet, 512x512 grayscale, Adam 1e-3, binary cross-entropy, 10 epochs, evaluation each epoch,
best checkpoint by mIoU, on the built-in synthetic vein phantom.

Other configs import `get_config()` from here and override only what differs. Override any field on the
command line: `python train.py --config=configs/default.py --config.num_epochs=3 --workdir=/tmp/run`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # ---- Model (veinjax.models.create_model) ----
  config.model = "resnet34_unet"  # resnet34_unet | unet | fcn8s | deeplabv3plus
  config.encoder = "resnet34"  # resnet18 | resnet34 | resnet50 (ResNet-based models only)
  # unet only (the other models ignore it, as unet ignores encoder): the channels of its contracting stages,
  # 1 to 6 of them (the original's by default; e.g. (16, 32, 64, 128, 256) is a common light U-Net).
  config.unet_widths = (64, 128, 256, 512, 1024)
  config.num_classes = 1  # 1 = one sigmoid "vein" logit; > 1 = softmax over classes (background first)
  # Two ways to train as the PyTorch reference (segmentation_models_pytorch's Unet("resnet34"), issue 18) does,
  # off by default so that runs train as before; each can be measured alone.
  # BatchNorm's running variance (what evaluation normalises with): biased = flax's, the batch variance as
  # training normalises with it | unbiased = PyTorch's, that times n / (n - 1) (n values per channel, over all
  # replicas). Training itself normalises with the biased variance either way.
  config.bn_running_variance = "biased"
  # Initialisation of a fresh random model: veinjax = He-normal fan-out convs (torchvision's), LeCun-normal
  # head | smp = segmentation_models_pytorch's: decoder convs kaiming-uniform fan-in, head xavier-uniform with
  # zero bias, a gray (not 3-channel) stem PyTorch's default conv init, the rest of the encoder torchvision's.
  # smp: resnet34_unet / encoder_unet on a ResNet encoder only. Pretrained or init_from weights replace it.
  config.model_init = "veinjax"

  # ---- Initialisation of a fresh run (veinjax.initialization; a resumed run ignores these) ----
  # A .safetensors / .npz torchvision or timm ResNet state dict for the encoder (ResNet encoders only; a .pth
  # converts with `python -m veinjax.tools.convert_weights IN.pth OUT.safetensors`); "" = random init.
  config.encoder_weights = ""
  # A veinjax workdir to start from (fine-tuning): same model, encoder, in_channels; num_classes may differ
  # (the head is then re-initialised). Fresh optimizer, step 0. "" = none; not together with encoder_weights.
  config.init_from = ""
  config.init_from_checkpoint = "best"  # best | latest: which checkpoint of init_from
  config.init_from_scope = "all"  # all | encoder (only params/batch_stats under 'encoder' are copied)

  # ---- Data (veinjax.data) ----
  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "vein_phantom"  # vein_phantom | folder | usgra_seg
  # Where TFDS builders write their prepared data; "" = TFDS's default (~/tensorflow_datasets).
  config.dataset.data_dir = ""
  # usgra_seg: a clone of github.com/tmkand/usgra-seg. folder: the root of the user's folder.
  config.dataset.root = ""
  config.dataset.usgra_config = "vessel"  # usgra_seg only: vessel (binary, label 2) | nerve_vessel (3 classes)
  # vein_phantom only: how many examples to generate per split and at which size (the paper: 300 / 200).
  config.dataset.phantom_num_train = 300
  config.dataset.phantom_num_test = 200
  config.dataset.phantom_size = 512
  # folder only: Labelme label name -> class index (anything not listed is an error, never background).
  config.dataset.labelme_labels = {"vein": 1}
  # folder only: mask PNG value -> class index, as "value:class" pairs; every other value is an error.
  config.dataset.mask_values = "0:0,255:1"
  # folder only, single folder with no train/test sub-folders: fraction held out for test (seeded split).
  config.dataset.test_fraction = 0.4
  # Carved from train (seeded) when the dataset has no validation split; used to pick the best checkpoint.
  config.dataset.validation_fraction = 0.1
  # folder only: split by subject. A regex searched in each file name whose first group (or whole match)
  # names the subject, e.g. r"^(patient\d+)_"; test_fraction and validation_fraction then hold out whole
  # subjects. "" = file by file (the splits exactly as without it).
  config.dataset.group_pattern = ""
  config.dataset.on_bad_example = "error"  # error | skip (skip logs each file and the count)
  # folder only: how 16-bit grayscale images become 8 bits (veinjax.data.decode; logged once):
  # auto = the bit depth a PNG's sBIT chunk records (e.g. 12: 0..4095 -> 0..255), else 16 | 16 = 0..65535 ->
  # 0..255 | 12 = 0..4095 -> 0..255 (raw 12-bit samples in a 16-bit file without sBIT) | minmax = each image's
  # own min..max -> 0..255.
  config.dataset.high_bit_depth = "auto"

  # ---- Input pipeline ----
  config.image_size = 512  # model input H = W; must be divisible by 32
  config.resize_method = "resize"  # resize | letterbox | crop
  config.in_channels = 1  # 1 = the paper's 8-bit grayscale; 3 = RGB
  # Input normalisation after the [0, 1] conversion (and after augmentation): (x - mean) / std, one value per
  # input channel, e.g. --config.input_mean="(0.449,)"; empty = the plain [0, 1] input. Filled automatically
  # when empty: ImageNet's with encoder_weights (gray: mean 0.4488, std 0.2260), the source run's with
  # init_from. config.json records it, so eval.py and inference apply the same.
  config.input_mean = ()
  config.input_std = ()

  config.augment = ml_collections.ConfigDict()
  config.augment.enabled = True
  config.augment.rotation_degrees = 15.0  # uniform in [-r, r]
  config.augment.hflip = True
  config.augment.vflip = False  # depth has meaning in ultrasound: off by default
  config.augment.shift_fraction = 0.1  # of the image size, each axis
  config.augment.scale_range = (0.9, 1.1)
  config.augment.projective = 0.0  # strength of the random projective ("projection") warp; 0 = off
  config.augment.brightness = 0.1  # additive, uniform in [-b, b] on [0, 1] intensities
  config.augment.contrast = 0.2  # multiplicative, uniform in [1 - c, 1 + c]
  config.augment.gamma = 0.0  # gamma uniform in [1 - g, 1 + g]; 0 = off
  config.augment.speckle = 0.0  # std of multiplicative speckle noise (uniform, mean 1); 0 = off

  config.batch_size = 4  # global, across all devices and hosts
  config.eval_batch_size = 8

  # ---- Optimisation ----
  config.num_epochs = 10
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  config.lr_schedule = "constant"  # constant | cosine (with warmup_epochs of linear warmup)
  config.warmup_epochs = 0.0
  config.weight_decay = 0.0  # > 0 switches Adam to AdamW
  config.grad_clip_norm = 0.0  # 0 = no clipping
  # > 0: keep an exponential moving average of the weights and BatchNorm statistics over about
  # 1 / (1 - ema_decay) steps (bias-corrected: veinjax.steps.ema_update); the run evaluates, chooses and
  # checkpoints the average as its model (the trained weights are kept for resuming).
  config.ema_decay = 0.0
  config.loss = "bce"  # bce | dice | bce_dice | focal (softmax cross-entropy when num_classes > 1)
  config.half_precision = False  # bf16 computation; float32 parameters and loss

  # ---- Parallelism ----
  config.parallelism = "pmap"  # pmap | jit

  # ---- Evaluation, checkpoints, logging ----
  config.eval_every_epochs = 1
  # Where the best checkpoint is chosen; "test" = the paper's own practice; "none" = no held-out evaluation,
  # the last checkpoint is the best (what a final fit trains with).
  config.eval_split = "validation"
  config.best_metric = "miou"  # any key of the metrics dict; higher is better
  config.keep_checkpoints = 2  # latest N kept besides the best
  config.checkpoint_every_steps = 0  # also checkpoint mid-epoch every N steps (long epochs); 0 = epoch ends only
  config.log_every_steps = 10
  config.num_summary_images = 3
  config.pixel_spacing_mm = 0.0  # > 0 also reports HD95 in millimetres
  # After the run, retrain from scratch (same seed) on train + validation for the epoch count validation chose,
  # keeping the last checkpoint, into WORKDIR/final/, evaluated on test (final/eval/test_metrics.json);
  # veinjax.final_fit. Needs eval_split=validation carved from train (validation_fraction > 0).
  config.final_fit = False

  # ---- compare: the paper reproduction (python -m veinjax.experiments.compare) ----
  # Read only by veinjax.experiments.compare; each run it trains gets this config without this block.
  config.compare = ml_collections.ConfigDict()
  config.compare.models = "resnet34_unet,deeplabv3plus,fcn8s,unet"  # comma-separated, in table order
  config.compare.num_seeds = 1  # > 1: seeds config.seed .. config.seed + n - 1, mean +- std in the table
  config.compare.timing_runs = 20  # inference ms per frame = the median of this many batch-1 runs
  config.compare.num_figure_images = 3  # rows of fig5.png: the first test images with foreground
  # True: train nothing; tabulate the runs already finished in --workdir (e.g. while others still train).
  config.compare.report_only = False

  return config
