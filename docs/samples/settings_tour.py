# Settings (docs/settings.md). Run it: python settings_tour.py (nothing connects until a task is sent)
from rabbittask import App, ConfigError

# --8<-- [start:app]
app = App(
    "shop",
    broker_url="amqp://shop:secret@rabbit-1:5672/shop,amqp://shop:secret@rabbit-2:5672/shop",  # fail over in order
    prefetch=32,
    result_backend="redis://cache:6379/0",
)
print(len(app.settings.broker_urls), app.settings.prefetch)  # 2 32; RABBITTASK_* fill in what is not given
# --8<-- [end:app]

# --8<-- [start:mistakes]
for wrong in ({"prefetch": "many"}, {"broker_url": "rabbit-1:5672"}, {"task_acks_late": True}):
    try:
        App("shop", **wrong)
    except ConfigError as e:
        print(e)
# --8<-- [end:mistakes]
