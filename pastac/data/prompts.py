"""A reproducible, offline instruction set for annotated-data generation.

Prompts come from hand-written templates filled in from hand-written lists (topics, tasks, pairs,
places, numbers).  Everything that varies is drawn from ``random.Random`` seeded with a fixed integer,
candidates are built in list order (never from a set or a dict keyed by a str hash), and the split is
a SHA-256 hash of the normalised prompt, so ``build_prompts()`` gives the same records on every run
and every machine.

Five categories call for answers with independent parts that a model should decode in parallel
(``list``, ``howto``, ``comparison``, ``explanation``, ``plan``); four call for short or sequential
answers that should not fork (``factual``, ``sentence``, ``arithmetic``, ``code``).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pastac import jsonl

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")

#: Category -> whether a good answer has independent parts (forks).
FORKABLE: dict[str, bool] = {
    "list": True,
    "howto": True,
    "comparison": True,
    "explanation": True,
    "plan": True,
    "factual": False,
    "sentence": False,
    "arithmetic": False,
    "code": False,
}
CATEGORIES: tuple[str, ...] = tuple(FORKABLE)

#: How many prompts each category contributes (70% forkable).
COUNTS: dict[str, int] = {
    "list": 500,
    "howto": 300,
    "comparison": 300,
    "explanation": 300,
    "plan": 280,
    "factual": 220,
    "sentence": 180,
    "arithmetic": 150,
    "code": 170,
}

DEFAULT_SEED = 20250511
_SPLIT_SALT = "pastac-prompts-split-v1"


@dataclass(frozen=True)
class PromptRecord:
    """One instruction: a stable id, the prompt text, its category, whether it should fork, its split."""

    id: str
    prompt: str
    category: str
    forkable: bool
    split: Split

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {self.split!r}")
        if self.category not in FORKABLE:
            raise ValueError(f"unknown category {self.category!r}")


def normalise(text: str) -> str:
    """Lower case, white space collapsed: the key for distinctness and for the split."""
    return " ".join(text.lower().split())


def assign_split(prompt: str) -> Split:
    """The split of a prompt: 90% train, 5% validation, 5% test, by a stable hash of its normalised text."""
    digest = hashlib.sha256(f"{_SPLIT_SALT}\n{normalise(prompt)}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 1000
    if bucket < 900:
        return "train"
    return "validation" if bucket < 950 else "test"


# --------------------------------------------------------------------------------------------- word lists

_NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
)

# Activities, as gerund phrases ("tips for ..."): everyday first, then technical.
ACTIVITIES: tuple[str, ...] = (
    "improving your sleep",
    "budgeting on a low income",
    "learning Spanish",
    "saving for retirement",
    "cooking healthy meals on a budget",
    "growing vegetables on a balcony",
    "keeping houseplants alive",
    "running your first 5K",
    "starting a morning routine",
    "reducing screen time",
    "staying focused while working from home",
    "making friends in a new city",
    "public speaking",
    "writing a CV",
    "preparing for exams",
    "reading more books",
    "learning to play the guitar",
    "taking better photos with a phone",
    "decluttering your home",
    "staying motivated at the gym",
    "drinking more water",
    "managing stress",
    "meal prepping for the week",
    "travelling on a budget",
    "packing light for a trip",
    "raising a puppy",
    "caring for an older cat",
    "teaching kids to read",
    "keeping a journal",
    "learning to draw",
    "baking sourdough bread",
    "brewing better coffee at home",
    "hosting a dinner party",
    "saving energy at home",
    "cycling to work",
    "hiking safely",
    "camping with children",
    "learning to swim as an adult",
    "practising mindfulness",
    "negotiating a salary",
    "networking at conferences",
    "managing a small team",
    "giving useful feedback",
    "running effective meetings",
    "writing clear emails",
    "managing your time",
    "avoiding procrastination",
    "building a new habit",
    "breaking a bad habit",
    "memorising vocabulary",
    "studying maths",
    "writing an essay",
    "improving your credit score",
    "paying off debt",
    "investing in index funds",
    "buying a used car",
    "renting your first flat",
    "moving house",
    "living with roommates",
    "keeping a kitchen clean",
    "composting at home",
    "attracting birds to your garden",
    "keeping chickens",
    "planning a wedding on a budget",
    "choosing a good gift",
    "volunteering in your community",
    "learning to knit",
    "woodworking as a beginner",
    "painting with watercolours",
    "writing poetry",
    "starting a podcast",
    "starting a blog",
    "selling things online",
    "starting a small business",
    "working as a freelancer",
    "staying safe online",
    "creating strong passwords",
    "backing up your photos",
    "protecting your privacy online",
    "choosing a laptop",
    "speeding up an old computer",
    "eating more vegetables",
    "cutting down on sugar",
    "improving your posture",
    "stretching after exercise",
    "caring for your skin in winter",
    "looking after your mental health",
    "supporting a grieving friend",
    "talking to teenagers",
    "coping with jet lag",
    "learning to cook",
    "making your home more eco-friendly",
    "shopping for groceries efficiently",
    "reducing food waste",
    "staying warm in winter cheaply",
    "preparing for parenthood",
    "working night shifts",
    "commuting by train",
    "driving in snow",
    "learning a musical instrument as an adult",
    "singing in tune",
    "debugging Python code",
    "writing unit tests",
    "learning SQL",
    "learning Rust",
    "using Git",
    "writing clean code",
    "reviewing pull requests",
    "designing a REST API",
    "securing a web application",
    "deploying a web app",
    "using Docker",
    "learning Kubernetes",
    "writing shell scripts",
    "optimising database queries",
    "profiling slow code",
    "learning machine learning",
    "cleaning messy data",
    "building a data dashboard",
    "learning statistics",
    "writing technical documentation",
    "contributing to open source",
    "preparing for a coding interview",
    "learning JavaScript",
    "building a personal website",
    "making a website accessible",
    "improving website performance",
    "setting up a home network",
    "building a PC",
    "learning Linux",
    "using the command line",
    "automating tasks with Python",
    "managing a software project",
    "estimating software tasks",
    "designing a database schema",
    "handling errors in Go",
    "writing concurrent code",
    "learning functional programming",
    "using regular expressions",
    "handling time zones in code",
    "logging in production services",
    "monitoring servers",
    "keeping dependencies up to date",
    "migrating to the cloud",
    "reducing cloud costs",
    "learning data structures and algorithms",
    "using spreadsheets effectively",
    "building an Arduino project",
    "learning electronics",
    "3D printing",
    "editing videos",
    "producing music at home",
    "making a mobile app",
    "writing a good README",
    "naming variables",
    "refactoring legacy code",
    "getting to know a large codebase",
    "pair programming",
    "using an AI assistant for coding",
)

_LIST_TEMPLATES: tuple[tuple[str, bool], ...] = (  # (template, number written as a word)
    ("Give me {n} tips for {a}.", True),
    ("List {n} ways to get better at {a}.", False),
    ("What are {n} common mistakes to avoid when {a}?", True),
    ("Share {n} practical tips for {a}.", False),
    ("Suggest {n} habits that help with {a}.", True),
    ("What are the {n} most important things to know about {a}?", True),
    ("I'm new to {a}. Give me {n} pieces of advice.", False),
    ("List {n} tools or resources that help with {a}.", False),
    ("Name {n} myths about {a} and explain why each is wrong.", True),
    ("What are {n} quick wins for someone who wants to improve at {a}?", False),
)

# Tasks whose steps are largely independent, as infinitive phrases ("how do I ...").
HOWTO_TASKS: tuple[str, ...] = (
    "prepare for a job interview",
    "prepare for a long-haul flight",
    "get a new puppy settled at home",
    "get ready for a camping trip",
    "prepare my home for winter",
    "set up a productive home office",
    "get ready for the first day at a new job",
    "prepare for a driving test",
    "secure my home Wi-Fi network",
    "make a small apartment feel bigger",
    "prepare my garden for spring",
    "reduce household waste",
    "childproof my home",
    "prepare for a power cut",
    "get my house ready to sell",
    "declutter my bedroom",
    "onboard a new team member",
    "prepare for a presentation at work",
    "prepare for a salary negotiation",
    "harden a Linux server",
    "make my website more accessible",
    "prepare for an exam in two weeks",
    "prepare my car for a long road trip",
    "get ready for a marathon",
    "set up a new laptop",
    "organise a neighbourhood clean-up",
    "prepare for a visit from my parents",
    "get ready for a baby",
    "set up a new Python project",
    "prepare a conference talk",
    "set up a saltwater aquarium",
    "prepare for moving abroad",
    "set up a small online shop",
    "get my finances in order",
    "prepare for a tax return",
    "plan a surprise party",
    "pack for a week-long holiday",
    "make my home safer for an elderly relative",
    "set up a home gym",
    "prepare for a hurricane",
    "start a book club",
    "start running again after an injury",
    "get ready for a job fair",
    "prepare a rental flat for new tenants",
    "set up parental controls for my kids",
    "prepare for a performance review",
    "get my bike ready for summer",
    "host a board game night",
    "prepare for a hospital stay",
    "set up continuous integration for a project",
    "get ready for a school year as a teacher",
    "set up a new smartphone",
    "prepare for a wedding speech",
    "make my commute more pleasant",
    "improve the security of my online accounts",
    "prepare for a first date",
    "welcome a new cat into the home",
    "get ready for a music exam",
    "prepare a garden for a summer party",
    "organise my digital photos",
)

_HOWTO_TEMPLATES: tuple[str, ...] = (
    "How do I {t}?",
    "What steps should I take to {t}?",
    "Walk me through how to {t}.",
    "Give me step-by-step instructions to {t}.",
    "I need to {t}. What should I do?",
    "What's the best way to {t}? Break it into steps.",
)

COMPARISON_PAIRS: tuple[tuple[str, str], ...] = (
    ("tea", "coffee"),
    ("renting", "buying a home"),
    ("Python", "JavaScript"),
    ("TCP", "UDP"),
    ("cats", "dogs as pets"),
    ("electric cars", "petrol cars"),
    ("running", "swimming"),
    ("e-books", "printed books"),
    ("public schools", "private schools"),
    ("iOS", "Android"),
    ("SQL", "NoSQL databases"),
    ("trains", "planes for travel in Europe"),
    ("index funds", "individual stocks"),
    ("freelancing", "a salaried job"),
    ("working from home", "working in an office"),
    ("living in a city", "living in the countryside"),
    ("Git merge", "Git rebase"),
    ("REST", "GraphQL"),
    ("Docker", "virtual machines"),
    ("React", "Vue"),
    ("Rust", "C++"),
    ("Java", "Kotlin"),
    ("processes", "threads"),
    ("stocks", "bonds"),
    ("credit cards", "debit cards"),
    ("solar power", "wind power"),
    ("nuclear power", "coal power"),
    ("yoga", "pilates"),
    ("free weights", "machines at the gym"),
    ("a Roth IRA", "a traditional IRA"),
    ("Mac", "Windows laptops"),
    ("Spotify", "Apple Music"),
    ("butter", "margarine"),
    ("gas stoves", "induction hobs"),
    ("baking soda", "baking powder"),
    ("a gap year", "going straight to university"),
    ("learning online", "learning in a classroom"),
    ("fixed-rate mortgages", "variable-rate mortgages"),
    ("leasing a car", "buying a car"),
    ("hostels", "hotels"),
    ("capitalism", "socialism"),
    ("weather", "climate"),
    ("viruses", "bacteria"),
    ("mitosis", "meiosis"),
    ("DNA", "RNA"),
    ("impressionism", "expressionism"),
    ("Plato", "Aristotle"),
    ("the Iliad", "the Odyssey"),
    ("classical music", "jazz"),
    ("film photography", "digital photography"),
    ("Kindle", "Kobo e-readers"),
    ("static typing", "dynamic typing"),
    ("unit tests", "integration tests"),
    ("monoliths", "microservices"),
    ("PostgreSQL", "MySQL"),
    ("AWS", "Google Cloud"),
    ("Vim", "Emacs"),
    ("tabs", "spaces for indentation"),
    ("HTTP/1.1", "HTTP/2"),
    ("symmetric encryption", "asymmetric encryption"),
    ("RAM", "storage"),
    ("SSDs", "hard drives"),
    ("Wi-Fi", "Ethernet at home"),
    ("agile", "waterfall project management"),
    ("Scrum", "Kanban"),
    ("LED bulbs", "incandescent bulbs"),
    ("heat pumps", "gas boilers"),
    ("a Kindle", "a tablet for reading"),
    ("hiking boots", "trail runners"),
    ("tents", "hammocks for camping"),
    ("Spanish", "French as a first foreign language"),
    ("piano", "guitar for a beginner"),
    ("cardio", "strength training"),
    ("the keto diet", "the Mediterranean diet"),
    ("oat milk", "almond milk"),
    ("a 401(k)", "an IRA"),
    ("term life insurance", "whole life insurance"),
    ("Airbnb", "a hotel"),
    ("Zoom", "Microsoft Teams"),
    ("Excel", "Google Sheets"),
    ("Markdown", "reStructuredText"),
)

_COMPARISON_TEMPLATES: tuple[str, ...] = (
    "Compare {a} and {b}.",
    "What are the differences between {a} and {b}?",
    "Should I choose {a} or {b}? Explain the pros and cons of each.",
    "How does {a} differ from {b}?",
    "Give me a side-by-side comparison of {a} and {b}.",
)

# Phenomena with causes and effects.
PHENOMENA: tuple[str, ...] = (
    "inflation",
    "the French Revolution",
    "deforestation",
    "the 2008 financial crisis",
    "urban heat islands",
    "antibiotic resistance",
    "the decline of bee populations",
    "housing shortages in big cities",
    "the fall of the Western Roman Empire",
    "ocean acidification",
    "the Industrial Revolution",
    "the Great Depression",
    "rising obesity rates",
    "loneliness among older adults",
    "traffic congestion",
    "soil erosion",
    "the spread of misinformation online",
    "the Dust Bowl",
    "coral bleaching",
    "burnout at work",
    "population ageing",
    "the Protestant Reformation",
    "desertification",
    "air pollution in cities",
    "the Cold War",
    "global supply chain disruptions",
    "more frequent wildfires",
    "the rise of the gig economy",
    "growing student debt",
    "microplastic pollution",
    "the Black Death",
    "the collapse of the Soviet Union",
    "hyperinflation in Weimar Germany",
    "the Irish potato famine",
    "rural depopulation",
    "sleep deprivation",
    "the decline of local newspapers",
    "overfishing",
    "the American Civil War",
    "the printing revolution in Europe",
    "gentrification",
    "rising sea levels",
    "the dot-com bubble",
    "the baby boom after the Second World War",
    "invasive species",
)

_PHENOMENON_TEMPLATES: tuple[str, ...] = (
    "Explain the causes and effects of {x}.",
    "What are the main causes and consequences of {x}?",
    "Give an overview of {x}: its causes, its effects and what can be learned from it.",
)

# Concepts and technologies with several aspects.
CONCEPTS: tuple[str, ...] = (
    "vaccines",
    "solar panels",
    "public-key cryptography",
    "compound interest",
    "machine learning",
    "blockchains",
    "the immune system",
    "photosynthesis",
    "index funds",
    "nuclear power",
    "electric cars",
    "the stock market",
    "DNS",
    "garbage collection in programming languages",
    "GPS",
    "3D printing",
    "recycling",
    "heat pumps",
    "credit scores",
    "neural networks",
    "software containers",
    "version control",
    "the water cycle",
    "black holes",
    "CRISPR gene editing",
    "carbon pricing",
    "universal basic income",
    "remote work",
    "intermittent fasting",
    "open-source software",
    "cloud computing",
    "quantum computing",
    "the European Union",
    "plate tectonics",
    "the placebo effect",
    "mortgages",
    "inflation targeting",
    "evolution by natural selection",
    "the internet's routing system",
    "electric grids",
    "the gut microbiome",
    "cognitive behavioural therapy",
    "the scientific method",
    "supply and demand",
    "social media algorithms",
    "the greenhouse effect",
    "noise-cancelling headphones",
    "lithium-ion batteries",
    "search engines",
    "password managers",
)

_CONCEPT_TEMPLATES: tuple[str, ...] = (
    "Give me an overview of {x}, covering the basic idea, the benefits and the drawbacks.",
    "What are the advantages and disadvantages of {x}?",
    "Explain {x} from several angles: the basic idea, practical uses and common misconceptions.",
    "Describe {x}: the key concepts, real-world applications and main criticisms.",
)

CITIES: tuple[str, ...] = (
    "Lisbon",
    "Kyoto",
    "Rome",
    "Barcelona",
    "Paris",
    "Berlin",
    "Prague",
    "Vienna",
    "Budapest",
    "Amsterdam",
    "Copenhagen",
    "Stockholm",
    "Edinburgh",
    "Dublin",
    "London",
    "New York",
    "Chicago",
    "San Francisco",
    "Mexico City",
    "Buenos Aires",
    "Rio de Janeiro",
    "Cape Town",
    "Marrakesh",
    "Cairo",
    "Istanbul",
    "Athens",
    "Tokyo",
    "Seoul",
    "Bangkok",
    "Hanoi",
    "Singapore",
    "Sydney",
    "Melbourne",
    "Auckland",
    "Vancouver",
    "Montreal",
    "Reykjavik",
    "Krakow",
    "Florence",
    "Venice",
    "Seville",
    "Porto",
    "Bruges",
    "Munich",
    "Zurich",
    "Oslo",
    "Helsinki",
    "Tallinn",
    "Dubrovnik",
    "Lima",
)

_TRIP_TEMPLATES: tuple[str, ...] = (
    "Plan a {n}-day trip to {c}.",
    "Make an itinerary for {n} days in {c} for a family with young children.",
    "Plan a {n}-day budget trip to {c}.",
)

STUDY_SUBJECTS: tuple[str, ...] = (
    "linear algebra",
    "organic chemistry",
    "European history",
    "Spanish grammar",
    "calculus",
    "introductory statistics",
    "Python programming",
    "microeconomics",
    "biology",
    "physics mechanics",
    "the SAT",
    "the IELTS exam",
    "music theory",
    "art history",
    "accounting",
    "Japanese",
    "German",
    "philosophy",
    "world geography",
    "discrete mathematics",
    "data science",
    "web development",
    "the bar exam",
    "anatomy",
    "psychology",
    "machine learning",
    "French",
    "Mandarin Chinese",
    "computer networks",
    "operating systems",
    "probability",
    "English literature",
    "macroeconomics",
    "astronomy",
    "genetics",
)

_STUDY_TEMPLATES: tuple[str, ...] = (
    "Make a weekly study plan for {s}.",
    "Create a {n}-week plan to learn {s} from scratch.",
)

FITNESS_GOALS: tuple[str, ...] = (
    "run a 10K",
    "do ten pull-ups",
    "lose weight safely",
    "build muscle at home",
    "improve my flexibility",
    "run a half marathon",
    "get stronger with only dumbbells",
    "improve my posture",
    "swim a mile",
    "cycle 100 km in a day",
    "get back in shape after a break",
    "improve my balance",
    "do a full push-up",
    "increase my endurance",
    "prepare for a hiking holiday",
)

_FITNESS_TEMPLATES: tuple[str, ...] = (
    "Create a {n}-week training plan to {g}.",
    "Design a weekly workout plan to help me {g}.",
)

DIETS: tuple[str, ...] = (
    "vegetarian",
    "vegan",
    "low-budget",
    "high-protein",
    "gluten-free",
    "Mediterranean",
    "quick weeknight",
    "low-sugar",
    "kid-friendly",
    "dairy-free",
)
HOUSEHOLDS: tuple[str, ...] = ("one person", "a couple", "a family of four")

EVENTS: tuple[str, ...] = (
    "a 30th birthday party",
    "a small wedding",
    "a company offsite",
    "a family reunion",
    "a child's birthday party",
    "a charity bake sale",
    "a neighbourhood barbecue",
    "a baby shower",
    "a retirement party",
    "a book launch",
    "a weekend hackathon",
    "a school fundraiser",
    "a garage sale",
    "a housewarming party",
    "a team-building day",
    "a conference for 200 people",
    "a holiday dinner for 12",
    "a graduation party",
    "a community garden opening",
    "a photography exhibition",
)

_EVENT_TEMPLATES: tuple[str, ...] = (
    "Plan {e}: list what needs to be done in the weeks before.",
    "Make a timeline for organising {e}.",
)

COUNTRIES: tuple[str, ...] = (
    "France",
    "Germany",
    "Japan",
    "Brazil",
    "Canada",
    "Australia",
    "Kenya",
    "Egypt",
    "India",
    "Mexico",
    "Argentina",
    "Chile",
    "Peru",
    "Norway",
    "Sweden",
    "Finland",
    "Poland",
    "Portugal",
    "Greece",
    "Turkey",
    "Thailand",
    "Vietnam",
    "Indonesia",
    "South Korea",
    "New Zealand",
    "Morocco",
    "Nigeria",
    "Ghana",
    "Ethiopia",
    "Iceland",
    "Ireland",
    "Hungary",
    "Austria",
    "Switzerland",
    "Belgium",
    "the Netherlands",
    "Denmark",
    "Colombia",
    "Cuba",
    "Mongolia",
    "Nepal",
    "Pakistan",
    "the Philippines",
    "Malaysia",
    "Spain",
    "Italy",
    "China",
    "Russia",
    "South Africa",
    "Saudi Arabia",
)

BOOKS: tuple[str, ...] = (
    "Pride and Prejudice",
    "War and Peace",
    "One Hundred Years of Solitude",
    "Moby-Dick",
    "1984",
    "The Great Gatsby",
    "Don Quixote",
    "Crime and Punishment",
    "Jane Eyre",
    "The Odyssey",
    "Hamlet",
    "Frankenstein",
    "The Catcher in the Rye",
    "To Kill a Mockingbird",
    "The Little Prince",
    "Ulysses",
    "The Divine Comedy",
    "Madame Bovary",
    "Things Fall Apart",
    "The Hobbit",
    "Brave New World",
    "Middlemarch",
    "The Trial",
    "Beloved",
    "Dracula",
)

ELEMENTS: tuple[str, ...] = (
    "gold",
    "silver",
    "iron",
    "sodium",
    "potassium",
    "lead",
    "tin",
    "copper",
    "mercury",
    "helium",
    "neon",
    "carbon",
    "oxygen",
    "nitrogen",
    "calcium",
    "zinc",
    "uranium",
    "tungsten",
    "magnesium",
    "chlorine",
    "sulfur",
    "phosphorus",
    "argon",
    "platinum",
    "lithium",
)

HISTORY_EVENTS: tuple[str, ...] = (
    "the Berlin Wall fall",
    "the first humans land on the Moon",
    "the Titanic sink",
    "the First World War end",
    "the French Revolution begin",
    "Columbus first reach the Americas",
    "the Second World War end",
    "the United States declare independence",
    "the Magna Carta get sealed",
    "the Wright brothers first fly",
    "the Euro become a currency",
    "the Soviet Union dissolve",
    "Nelson Mandela become president",
    "the first iPhone go on sale",
    "the Great Fire of London happen",
    "the printing press arrive in England",
    "Napoleon lose at Waterloo",
    "the Chernobyl disaster happen",
    "the World Wide Web go public",
    "the Panama Canal open",
)

UNIT_QUESTIONS: tuple[str, ...] = (
    "How many centimetres are in a metre?",
    "How many ounces are in a pound?",
    "How many feet are in a mile?",
    "How many seconds are in an hour?",
    "How many grams are in a kilogram?",
    "How many days are in a leap year?",
    "How many millilitres are in a litre?",
    "How many inches are in a foot?",
    "How many bits are in a byte?",
    "How many minutes are in a day?",
    "How many weeks are in a year?",
    "How many metres are in a kilometre?",
)

PAINTINGS: tuple[str, ...] = (
    "the Mona Lisa",
    "The Starry Night",
    "The Night Watch",
    "Guernica",
    "The Persistence of Memory",
    "The Birth of Venus",
    "Girl with a Pearl Earring",
    "The Scream",
    "The Last Supper",
    "Las Meninas",
    "The Garden of Earthly Delights",
    "American Gothic",
)

MISC_FACTS: tuple[str, ...] = (
    "What is the largest planet in the solar system?",
    "What is the longest river in Africa?",
    "What is the tallest mountain on Earth?",
    "At what temperature does water boil at sea level in Celsius?",
    "What gas do plants absorb from the air?",
    "How many bones are in the adult human body?",
    "What is the smallest prime number?",
    "Which ocean is the largest?",
    "What is the hardest natural mineral?",
    "Who developed the theory of general relativity?",
    "What is the speed of light in a vacuum?",
    "Which planet is closest to the Sun?",
    "What is the largest desert in the world?",
    "Who was the first person to walk on the Moon?",
    "What is the main language spoken in Brazil?",
    "How many players are on a football team on the pitch?",
    "What is the freezing point of water in Fahrenheit?",
    "Which organ pumps blood through the body?",
    "What is the chemical formula of water?",
    "Who discovered penicillin?",
    "What is the largest mammal?",
    "How many continents are there?",
    "Which element has the atomic number 1?",
    "How many strings does a standard guitar have?",
    "What does HTML stand for?",
    "What is the largest country by area?",
    "Who composed the Four Seasons?",
    "What is the square root of 144?",
    "Which blood type is the universal donor?",
    "What is the longest bone in the human body?",
)

PRODUCTS: tuple[str, ...] = (
    "a reusable water bottle",
    "a bicycle repair shop",
    "a vegan bakery",
    "a language-learning app",
    "a budgeting app",
    "an eco-friendly laundry detergent",
    "a neighbourhood library",
    "a dog-walking service",
    "a coffee subscription",
    "a coworking space",
    "a children's science museum",
    "a running shoe",
    "a meditation app",
    "a local farmers' market",
    "a home-cleaning service",
    "an electric scooter",
    "a bookshop café",
    "a recycling campaign",
    "a password manager",
    "a plant nursery",
    "a yoga studio",
    "a tutoring service",
    "a second-hand clothing shop",
    "a community theatre",
    "a solar panel installer",
    "a food delivery co-op",
    "a camping gear rental",
    "a board game café",
    "a pet grooming salon",
    "a noise-cancelling headset",
    "a hiking club",
    "a cooking class",
    "a small-batch hot sauce",
    "a city bike-sharing scheme",
    "a photography workshop",
    "a pottery studio",
    "an online chess club",
    "a sleep-tracking watch",
    "a blood donation drive",
    "a zero-waste grocery store",
)

TERMS: tuple[str, ...] = (
    "an API",
    "recursion",
    "inflation",
    "photosynthesis",
    "a compiler",
    "entropy",
    "a mortgage",
    "machine learning",
    "a black hole",
    "democracy",
    "an algorithm",
    "a hash function",
    "a virus",
    "gross domestic product",
    "a metaphor",
    "opportunity cost",
    "a database index",
    "cloud computing",
    "encryption",
    "a neural network",
    "biodiversity",
    "a haiku",
    "an index fund",
    "a firewall",
    "latency",
    "a prime number",
    "osmosis",
    "a sonnet",
    "gravity",
    "a URL",
    "an operating system",
    "open source",
    "a stock",
    "a bond",
    "a hypothesis",
    "an ecosystem",
    "a protocol",
    "a cache",
    "a spreadsheet",
    "a carbon footprint",
    "an emulsion",
    "a tariff",
    "a placebo",
    "a podcast",
    "a recession",
    "a glacier",
    "a volcano",
    "a synonym",
    "an allergy",
    "a startup",
    "a variable in programming",
    "a pixel",
    "bandwidth",
    "a vaccine",
    "a budget",
    "a thesis",
    "a symphony",
    "a prism",
    "an atom",
    "a planet",
)

RELATIONS: tuple[str, ...] = (
    "mother",
    "father",
    "sister",
    "brother",
    "best friend",
    "grandmother",
    "grandfather",
    "colleague",
    "boss",
    "neighbour",
    "teacher",
    "partner",
)

_SENTENCE_TEMPLATES: tuple[tuple[str, str], ...] = (  # (template, which list fills {x})
    ("Write a one-sentence slogan for {x}.", "product"),
    ("Suggest a catchy one-line tagline for {x}.", "product"),
    ("Give me a one-line definition of {x}.", "term"),
    ("Define {x} in a single sentence.", "term"),
    ("Write a one-sentence birthday message for my {x}.", "relation"),
    ("Write a one-sentence thank-you note to my {x}.", "relation"),
    ("In one sentence, why does {x} matter?", "activity"),
)

CODE_TASKS: tuple[str, ...] = (
    "reverses a string",
    "checks whether a number is prime",
    "returns the n-th Fibonacci number",
    "counts the vowels in a string",
    "removes duplicates from a list while keeping the order",
    "checks whether a string is a palindrome",
    "computes the factorial of n",
    "finds the largest element of a list",
    "converts Celsius to Fahrenheit",
    "merges two sorted lists",
    "computes the greatest common divisor of two integers",
    "counts the words in a sentence",
    "capitalises the first letter of every word",
    "sums the digits of an integer",
    "checks whether two strings are anagrams",
    "returns the second largest number in a list",
    "converts a binary string to an integer",
    "computes the average of a list of numbers",
    "finds the index of an element with binary search",
    "rotates a list by k positions",
    "returns the most frequent character in a string",
    "checks whether a year is a leap year",
    "converts a Roman numeral to an integer",
    "splits a list into chunks of size n",
    "computes the median of a list",
    "removes all whitespace from a string",
    "returns the intersection of two lists",
    "generates the first n prime numbers",
    "checks whether brackets in a string are balanced",
    "converts snake_case to camelCase",
    "counts how often each word occurs in a text",
    "computes the power of a number without a library call",
    "validates a simple email address",
    "truncates a string to n characters with an ellipsis",
    "returns the running total of a list",
    "checks whether a list is sorted",
    "computes the distance between two points",
    "formats a number of seconds as hh:mm:ss",
    "returns the last n lines of a text",
    "clamps a number between a minimum and a maximum",
)

LANGUAGES: tuple[str, ...] = ("Python", "JavaScript", "TypeScript", "Go", "Rust")

_CODE_TEMPLATES: tuple[str, ...] = (
    "Write a {lang} function that {task}.",
    "Implement a small {lang} function that {task}.",
)


# ----------------------------------------------------------------------------------------------- generators


def _number(rng: random.Random, low: int, high: int, *, word: bool) -> str:
    n = rng.randint(low, high)
    return _NUMBER_WORDS[n] if word else str(n)


def _list_prompts(rng: random.Random) -> list[str]:
    out = []
    for activity in ACTIVITIES:
        for template, word in _LIST_TEMPLATES:
            out.append(template.format(n=_number(rng, 3, 10, word=word), a=activity))
    return out


def _howto_prompts(rng: random.Random) -> list[str]:
    return [template.format(t=task) for task in HOWTO_TASKS for template in _HOWTO_TEMPLATES]


def _comparison_prompts(rng: random.Random) -> list[str]:
    out = []
    for a, b in COMPARISON_PAIRS:
        for template in _COMPARISON_TEMPLATES:
            # Either order: "Compare tea and coffee" and "Compare coffee and tea" are both natural, except
            # where the second item carries a qualifier ("dogs as pets") that only reads well last.
            first, second = (b, a) if rng.random() < 0.3 and " " not in b else (a, b)
            out.append(template.format(a=first, b=second))
    return out


def _explanation_prompts(rng: random.Random) -> list[str]:
    out = [template.format(x=x) for x in PHENOMENA for template in _PHENOMENON_TEMPLATES]
    out += [template.format(x=x) for x in CONCEPTS for template in _CONCEPT_TEMPLATES]
    return out


def _plan_prompts(rng: random.Random) -> list[str]:
    out = [template.format(n=rng.randint(2, 7), c=city) for city in CITIES for template in _TRIP_TEMPLATES]
    out += [template.format(n=rng.randint(4, 12), s=s) for s in STUDY_SUBJECTS for template in _STUDY_TEMPLATES]
    out += [template.format(n=rng.randint(4, 12), g=g) for g in FITNESS_GOALS for template in _FITNESS_TEMPLATES]
    out += [f"Plan a week of {diet} dinners for {who}." for diet in DIETS for who in HOUSEHOLDS]
    out += [template.format(e=e) for e in EVENTS for template in _EVENT_TEMPLATES]
    return out


def _factual_prompts(rng: random.Random) -> list[str]:
    out = [f"What is the capital of {c}?" for c in COUNTRIES]
    out += [f"What is the official currency of {c}?" for c in COUNTRIES]
    out += [f"Who wrote {b}?" for b in BOOKS]
    out += [f"What is the chemical symbol for {e}?" for e in ELEMENTS]
    out += [f"In which year did {e}?" for e in HISTORY_EVENTS]
    out += [f"Who painted {p}?" for p in PAINTINGS]
    out += list(UNIT_QUESTIONS) + list(MISC_FACTS)
    return out


def _sentence_prompts(rng: random.Random) -> list[str]:
    sources: dict[str, Sequence[str]] = {
        "product": PRODUCTS,
        "term": TERMS,
        "relation": RELATIONS,
        "activity": ACTIVITIES,
    }
    return [template.format(x=x) for template, source in _SENTENCE_TEMPLATES for x in sources[source]]


def _arithmetic_prompt(rng: random.Random) -> str:
    kind = rng.randrange(8)
    if kind == 0:
        return f"What is {rng.randint(12, 999)} + {rng.randint(12, 999)}?"
    if kind == 1:
        a, b = sorted((rng.randint(10, 999), rng.randint(10, 999)), reverse=True)
        return f"What is {a} minus {b}?"
    if kind == 2:
        return f"What is {rng.randint(3, 99)} × {rng.randint(3, 49)}?"
    if kind == 3:
        b = rng.randint(2, 25)
        return f"What is {b * rng.randint(2, 60)} divided by {b}?"
    if kind == 4:
        return f"What is {rng.choice((5, 10, 15, 20, 25, 30, 40, 50, 75))}% of {rng.randint(2, 80) * 10}?"
    if kind == 5:
        return f"Convert {rng.randint(-20, 45)} degrees Celsius to Fahrenheit."
    if kind == 6:
        count, cents = rng.randint(2, 12), rng.randint(50, 2000)
        return f"If one notebook costs ${cents // 100}.{cents % 100:02d}, how much do {count} notebooks cost?"
    return f"What is the average of {rng.randint(1, 99)}, {rng.randint(1, 99)} and {rng.randint(1, 99)}?"


def _arithmetic_prompts(rng: random.Random) -> list[str]:
    return [_arithmetic_prompt(rng) for _ in range(3 * COUNTS["arithmetic"])]


def _code_prompts(rng: random.Random) -> list[str]:
    return [
        template.format(lang=lang, task=task)
        for task in CODE_TASKS
        for lang in LANGUAGES
        for template in _CODE_TEMPLATES
    ]


_GENERATORS: dict[str, Callable[[random.Random], list[str]]] = {
    "list": _list_prompts,
    "howto": _howto_prompts,
    "comparison": _comparison_prompts,
    "explanation": _explanation_prompts,
    "plan": _plan_prompts,
    "factual": _factual_prompts,
    "sentence": _sentence_prompts,
    "arithmetic": _arithmetic_prompts,
    "code": _code_prompts,
}


def _take_distinct(candidates: Iterable[str], count: int, seen: set[str]) -> list[str]:
    """The first ``count`` candidates whose normalised text is not in ``seen`` (which is updated)."""
    out = []
    for text in candidates:
        key = normalise(text)
        if key in seen:
            continue
        seen.add(key)
        out.append(text)
        if len(out) == count:
            break
    return out


def build_prompts(seed: int = DEFAULT_SEED) -> list[PromptRecord]:
    """The whole instruction set, identical on every run for a given seed, in category order."""
    records: list[PromptRecord] = []
    seen: set[str] = set()  # membership only: never iterated, so its order does not matter
    for index, category in enumerate(CATEGORIES):
        rng = random.Random(seed * 100 + index)
        candidates = _GENERATORS[category](rng)
        rng.shuffle(candidates)
        chosen = _take_distinct(candidates, COUNTS[category], seen)
        if len(chosen) < COUNTS[category]:
            raise RuntimeError(f"category {category!r}: only {len(chosen)} distinct prompts, {COUNTS[category]} wanted")
        for i, prompt in enumerate(chosen):
            records.append(
                PromptRecord(f"{category}-{i:05d}", prompt, category, FORKABLE[category], assign_split(prompt))
            )
    return records


# --------------------------------------------------------------------------------------------------- JSONL


def write_jsonl(records: Iterable[PromptRecord], path: str | Path) -> None:
    """Write one JSON object per line (the dataclass fields), UTF-8."""
    with Path(path).open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path) -> list[PromptRecord]:
    """Read records written by ``write_jsonl`` (blank lines are skipped)."""
    out = []
    for number, record in jsonl.parse(Path(path).read_text(encoding="utf-8")):
        if isinstance(record, str):
            raise ValueError(f"{path}:{number}: {record}")
        out.append(PromptRecord(**record))
    return out
