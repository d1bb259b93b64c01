import futurelens_tl as fl
from futurelens_tl.toy import TOY_PROMPTS, toy_texts

model = fl.toy_model()                     # offline default; fl.load_model("smollm2-135m") for a real model
texts = toy_texts("train", n=200)          # a list of documents (use real text for a real model)
logit = fl.LogitLens(model)
tuned = fl.TunedLens.fit(model, texts, tokens=2**15)   # .save(path) / fl.TunedLens.load(path, model)
future = fl.FutureLens.fit(model, texts, method="linear_hidden", n_ahead=(0, 1, 2, 3))
                                           # method="learned_prompt": the paper's best, slower

cmp = fl.compare(model, TOY_PROMPTS[0], [logit, tuned, future])
cmp.show(); cmp.save_html("grid.html")
ev = fl.evaluate(model, future, toy_texts("test", n=40), n_ahead=(0, 1, 2, 3), k=(1, 5, 10)); ev.show()

dec = fl.decompose_first_layer(model)      # no forward pass
dec.top_prefixes(model.to_single_token(" the"), head=0, k=10)
tags = fl.tag_heads(model); tags.show()
